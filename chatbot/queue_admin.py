"""The review queue at /admin/queue: grouped questions, next-unreviewed flow,
purging needs-deletion rows, and CSV import/export.

Unreviewed exchanges are grouped by meaning (chatbot/grouping.py: 배고파
and 밥 먹고 싶어 are one group), and inside a group by ``question_key``
(morph.question_key: spacing, punctuation and particles ignored), so one
correction is applied to all of a group's rows.  A key that does not belong
is split off with one click.  Without the encoder, the groups are the keys.
Groups with a 👎 come first, then the unsure ones, the biggest, the newest.
The empty key (a row with nothing visible, or one stored before
morph.question_key kept symbols: "?!" and "😀" had the same "") groups
nothing: such rows are reviewed one by one in the review list.

The "next" flow: ``/admin/queue/next?skip=N`` opens the N-th group in that
order; marking a group removes it from the queue, so the same N is the next
one, and 건너뛰기 (skip) is N+1.  Keys: Ctrl+Enter marks the group 검토
완료 with the correction typed; outside the text box, ``n`` skips and ``d``
marks 삭제 필요 (static/review.js).

Every change is written to the ``review_audit`` table (``database.audit``).
"""
import io
import logging
import os
import tempfile
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from flask import Response, current_app, flash, redirect, request, url_for
from flask_admin import BaseView, expose
from flask_login import current_user

from . import grouping, heavy
from .admin_base import ReviewerOnly, row_ids
from .database import (FEEDBACK_DOWN, NEEDS_DELETION, REVIEWED, ROUTE_UNSURE, UNREVIEWED, Exchange, QuestionGroup,
                       audit)
from .extensions import db
from .pairs import add_imported_pairs, reviewed_pairs
from .pairs_csv import PairsFileError, read_pairs_csv, write_pairs_csv

log = logging.getLogger(__name__)

MAX_GROUPS = 200
HOME_GROUP_ROWS = 5000  # the home page's groups: of the newest this many unreviewed exchanges
# The most rows of one group a reviewer sees (and marks) at once; the rest
# come back as the same group.
GROUP_ROWS = 500
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DECISIONS = {"reviewed": REVIEWED, "needs_deletion": NEEDS_DELETION}


class Group(NamedTuple):
    """A queue group: its key (grouping.members), its unreviewed rows' count,
    👎 and unsure counts and newest time, and its keys ``[(question_key,
    rows)]``, the most frequent first."""
    key: str
    count: int
    disliked: int
    unsure: int
    newest: datetime
    keys: list


def unreviewed_groups(limit=MAX_GROUPS, window=None) -> list[Group]:
    """The groups of unreviewed rows, in queue order: groups with a 👎 first,
    then groups the bot said it did not know (what it most needs to learn),
    then the biggest, then the newest.

    Counted over the newest ``window`` unreviewed rows (default: the app's
    ADMIN_QUEUE_ROWS): a read of that many rows by id on ix_exchange_status,
    however many wait in all.  MATERIALIZED: read first, then counted by
    key, so that no database plans to read every row in question_key order
    instead of sorting the window's.  Each key's group (question_group, by
    chatbot/grouping.py; a key not grouped is a group of its own) adds the
    keys up, here: one row per key of the window.
    """
    window = window or current_app.config["ADMIN_QUEUE_ROWS"]
    rows = (sa.select(Exchange.question_key, Exchange.feedback, Exchange.route, Exchange.created_at)
            .where(Exchange.status == UNREVIEWED, Exchange.id >= grouping.window_start(window),
                   Exchange.question_key != "")
            .cte("newest").prefix_with("MATERIALIZED"))
    by_key = (sa.select(rows.c.question_key.label("key"), sa.func.count().label("count"),
                        sa.func.sum(sa.case((rows.c.feedback == FEEDBACK_DOWN, 1), else_=0)).label("disliked"),
                        sa.func.sum(sa.case((rows.c.route == ROUTE_UNSURE, 1), else_=0)).label("unsure"),
                        sa.func.max(rows.c.created_at).label("newest"))
              .group_by(rows.c.question_key).cte("by_key").prefix_with("MATERIALIZED"))
    query = (sa.select(by_key, QuestionGroup.group_key)
             .select_from(by_key.outerjoin(QuestionGroup, QuestionGroup.question_key == by_key.c.key)))
    groups = {}
    for key, count, disliked, unsure, newest, group_key in db.session.connection().execute(query):
        group = groups.get(group_key or key)
        if group is None:
            groups[group_key or key] = [count, disliked, unsure, newest, [(key, count)]]
        else:
            group[0] += count
            group[1] += disliked
            group[2] += unsure
            if newest > group[3]:
                group[3] = newest
            group[4].append((key, count))
    order = sorted(groups)
    order.sort(key=lambda k: (groups[k][1] > 0, groups[k][2] > 0, groups[k][0], groups[k][3]),
               reverse=True)  # stable: ties stay in key order
    return [Group(key, *groups[key][:4], sorted(groups[key][4], key=lambda kc: (-kc[1], kc[0])))
            for key in order[:limit]]


def flagged_groups(limit=5, window=HOME_GROUP_ROWS):
    """[(Group, its newest questions)]: the groups with the most 👎 and
    unsure exchanges among the newest ``window`` unreviewed ones (recent
    trouble, for the admin home page's links, at a fraction of the queue's
    cost: the home page is the one every reviewer opens)."""
    found = [g for g in unreviewed_groups(window=window) if g.disliked + g.unsure]
    flagged = sorted(found, key=lambda g: -(g.disliked + g.unsure))[:limit]  # stable: in queue order
    previews = group_previews(flagged)
    return [(group, [question for question, _ in previews[group.key]]) for group in flagged]


def group_rows(key, limit=GROUP_ROWS):
    """The newest ``limit`` unreviewed rows of group ``key``."""
    return db.session.scalars(
        sa.select(Exchange).where(Exchange.status == UNREVIEWED, grouping.in_group(key))
        .order_by(Exchange.created_at.desc(), Exchange.id.desc()).limit(limit)).all()


def group_previews(groups, shown=3):
    """{group key: [(question, answer)]}: a group of one key, its newest
    ``shown`` unreviewed rows; else the newest of each of its ``shown`` most
    frequent keys.  A seek on ix_exchange_key_status_created each, by two
    statements built once (building hundreds would take longer than running
    them)."""
    def newest(count):
        return (sa.select(Exchange.question, Exchange.answer)
                .where(Exchange.status == UNREVIEWED, Exchange.question_key == sa.bindparam("key"))
                .order_by(Exchange.created_at.desc(), Exchange.id.desc()).limit(count))

    several, one = newest(shown), newest(1)
    connection = db.session.connection()
    previews = {}
    for group in groups:
        if len(group.keys) == 1:
            previews[group.key] = [tuple(row) for row in connection.execute(several, {"key": group.key})]
        else:
            previews[group.key] = [tuple(row) for key, _ in group.keys[:shown]
                                   for row in connection.execute(one, {"key": key})]
    return previews


def group_keys(key):
    """[(question_key, unreviewed rows, the newest question)] of group ``key``, the most frequent first."""
    counts = db.session.execute(
        sa.select(Exchange.question_key, sa.func.count(), sa.func.max(Exchange.id))
        .where(Exchange.status == UNREVIEWED, grouping.in_group(key)).group_by(Exchange.question_key)).all()
    questions = dict(db.session.execute(sa.select(Exchange.id, Exchange.question).where(
        Exchange.id.in_([newest for _, _, newest in counts]))).all())
    return sorted(((k, n, questions[newest]) for k, n, newest in counts), key=lambda row: (-row[1], row[0]))


def group_size(key):
    return db.session.scalar(sa.select(sa.func.count()).select_from(Exchange).where(
        Exchange.status == UNREVIEWED, grouping.in_group(key)))


def apply_to_group(key, ids, status, correction, reviewer_name):
    """Mark the listed unreviewed rows of group ``key``; returns how many changed.

    Only rows that are still unreviewed, in this group and among ``ids`` (the
    ones the reviewer saw) change: a row that arrived meanwhile waits.
    """
    rows = db.session.scalars(sa.select(Exchange).where(
        Exchange.id.in_(ids), grouping.in_group(key), Exchange.status == UNREVIEWED)).all()
    for row in rows:
        if status == REVIEWED and correction and correction != row.answer:
            row.corrected_answer = correction
        row.mark(status, reviewer_name, action="group")
    db.session.commit()
    return len(rows)


def purge_needs_deletion(reviewer_name):
    """Delete every needs-deletion row for good (each one is kept in the audit)."""
    rows = db.session.scalars(sa.select(Exchange).where(Exchange.status == NEEDS_DELETION)).all()
    for row in rows:
        audit(row, "purge", reviewer_name, old_status=row.status)
        db.session.delete(row)
    db.session.commit()
    return len(rows)


class QueueView(ReviewerOnly, BaseView):

    @expose("/")
    @heavy.page
    def index(self):
        grouping.grouper().nudge()  # keys that came in another process, or before a restart
        found = unreviewed_groups()
        previews = group_previews(found)
        groups = []
        for group in found:
            rows = previews[group.key]
            groups.append({"group": group, "questions": [question for question, _ in rows],
                           "counts": [count for _, count in group.keys[:len(rows)]] if len(group.keys) > 1 else [],
                           "more": max(0, len(group.keys) - len(rows)) if len(group.keys) > 1 else 0,
                           "answers": sorted({answer for _, answer in rows})})
        return self.render("admin/queue.html", groups=groups)

    @expose("/next")
    @heavy.page
    def next(self):
        skip = max(0, request.args.get("skip", 0, type=int) or 0)
        groups = unreviewed_groups(limit=skip + 1)
        if len(groups) <= skip:
            flash("검토할 대화가 더 없습니다." if skip == 0 else "건너뛴 것 말고는 검토할 대화가 없습니다.", "info")
            return redirect(url_for(".index"))
        return redirect(url_for(".group", key=groups[skip].key, skip=skip))

    @expose("/group", methods=["GET", "POST"])
    @heavy.page
    def group(self):
        key = request.values.get("key", "")
        skip = max(0, request.values.get("skip", 0, type=int) or 0)
        if request.method == "POST":
            status = DECISIONS.get(request.form.get("decision"))
            correction = (request.form.get("correction") or "").strip()[:2000] or None
            if status is None:
                flash("검토 결과를 고르세요.", "warning")
                return redirect(url_for(".group", key=key, skip=skip))
            changed = apply_to_group(key, row_ids(request.form.getlist("ids")), status, correction,
                                     current_user.username)
            flash(f"{changed}건을 '{'검토 완료' if status == REVIEWED else '삭제 필요'}'(으)로 표시했습니다."
                  + (" 수정한 답변을 모두에 적용했습니다." if correction and status == REVIEWED else ""), "success")
            return redirect(url_for(".next", skip=skip))
        rows = group_rows(key)
        if not rows:
            return redirect(url_for(".next", skip=skip))
        answers = {}
        for row in rows:
            answers[row.answer] = answers.get(row.answer, 0) + 1
        return self.render("admin/queue_group.html", key=key, rows=rows, skip=skip, total=group_size(key),
                           answers=sorted(answers.items(), key=lambda kv: -kv[1]), keys=group_keys(key))

    @expose("/split", methods=["POST"])
    @heavy.page
    def split(self):
        """Take one question key out of its group (grouping.split)."""
        key, member = request.form.get("key", ""), request.form.get("member", "")
        skip = max(0, request.form.get("skip", 0, type=int) or 0)
        rest = grouping.split(member, key, current_user.username)
        if rest is None:
            flash("그 질문은 이 묶음에 없거나 혼자입니다. 아무것도 바꾸지 않았습니다.", "warning")
            return redirect(url_for(".group", key=key, skip=skip))
        flash("질문 하나를 묶음에서 분리했습니다. 따로 검토할 수 있습니다.", "success")
        return redirect(url_for(".group", key=rest, skip=skip))

    @expose("/purge", methods=["POST"])
    @heavy.page
    def purge(self):
        count = purge_needs_deletion(current_user.username)
        log.info("%s purged %d needs-deletion exchanges", current_user.username, count)
        flash(f"삭제 필요인 대화 {count}건을 영구히 지웠습니다.", "success")
        return redirect(url_for("admin.index"))

    @expose("/export.csv")
    @heavy.page
    def export_csv(self):
        out = io.StringIO(newline="")
        write_pairs_csv(out, reviewed_pairs())
        name = f"reviewed-pairs-{datetime.now():%Y%m%d-%H%M%S}.csv"
        return Response(out.getvalue(), content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @expose("/import", methods=["POST"])
    @heavy.page
    def import_csv(self):
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            flash("가져올 CSV 파일을 고르세요.", "warning")
            return redirect(url_for("admin.index"))
        data = upload.stream.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            flash(f"파일이 너무 큽니다 (최대 {MAX_UPLOAD_BYTES // 1024 // 1024}MB). 아무것도 가져오지 않았습니다.", "danger")
            return redirect(url_for("admin.index"))
        fd, path = tempfile.mkstemp(suffix=".csv")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            pairs, errors = read_pairs_csv(path, max_chars=current_app.config["MAX_MESSAGE_CHARS"])
        except PairsFileError as exc:
            flash(f"{str(exc).replace(path, upload.filename)}: 아무것도 가져오지 않았습니다.", "danger")
            return redirect(url_for("admin.index"))
        finally:
            os.unlink(path)
        added, duplicates = add_imported_pairs(pairs)
        log.info("%s imported %d pairs from %s", current_user.username, added, upload.filename)
        message = f"{added}쌍을 가져왔습니다. 이미 있던 {duplicates}쌍, 잘못된 {len(errors)}줄은 건너뛰었습니다."
        if errors:
            message += " (" + ", ".join(f"{line}줄: {reason}" for line, reason in errors[:5]) + ")"
        flash(message, "success" if not errors else "warning")
        return redirect(url_for("admin.index"))
