"""The review queue (/admin/queue): grouped questions, one correction for a
group, the next-unreviewed flow, the audit, purging, CSV import/export."""
import io

import sqlalchemy as sa

from chatbot import morph
from chatbot.database import (FEEDBACK_DOWN, NEEDS_DELETION, REVIEWED, ROUTE_IMPORT, UNREVIEWED, Exchange,
                              ReviewAudit)
from chatbot.extensions import db
from chatbot.pairs import training_pairs

from helpers import add_exchange, get_row, statuses, token_in


def ask(app, question, answer="모르겠어요", **fields):
    with app.app_context():
        row = Exchange(question=question, question_key=morph.question_key(question), answer=answer, **fields)
        db.session.add(row)
        db.session.commit()
        return row.id


def audits(app):
    with app.app_context():
        return [(a.reviewer, a.action, a.exchange_id, a.old_status, a.new_status, a.corrected_answer)
                for a in db.session.scalars(sa.select(ReviewAudit).order_by(ReviewAudit.id))]


def token(client, path="/admin/"):
    return token_in(client.get(path).get_data(as_text=True))


def test_queue_pages_need_login(client):
    for path in ("/admin/queue/", "/admin/queue/next", "/admin/queue/export.csv", "/admin/audit/"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path
    token = token_in(client.get("/login").get_data(as_text=True))  # a valid token: only the login is missing
    response = client.post("/admin/queue/purge", data={"csrf_token": token})
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_the_empty_key_groups_nothing(app, client, auth, reviewer):
    """Rows stored with the empty key ("?!" and "😀" had it, before
    morph.question_key kept symbols) are no group of one question."""
    with app.app_context():
        empty = [Exchange(question=text, question_key="", answer="모르겠어요") for text in ("?!", "😀", "...")]
        db.session.add_all(empty)
        db.session.commit()
        rows = [row.id for row in empty]
    ask(app, "배고파")
    auth.login()
    html = client.get("/admin/queue/").get_data(as_text=True)
    assert html.count('href="/admin/queue/group?') == 1 and "배고파" in html and "😀" not in html
    response = client.post("/admin/queue/group", data={
        "csrf_token": token_in(html), "key": "", "skip": "0", "decision": "reviewed",
        "correction": "물음표", "ids": [str(i) for i in rows]})
    assert response.status_code == 302
    assert [statuses(app)[i] for i in rows] == [UNREVIEWED] * 3
    assert [get_row(app, i).corrected_answer for i in rows] == [None] * 3


def test_near_identical_questions_are_grouped_and_one_correction_applies_to_all(app, client, auth, reviewer):
    a = ask(app, "점심 뭐 먹지?")
    b = ask(app, "점심 뭐 먹지", answer="몰라요")
    c = ask(app, "점심  뭐  먹지 ?!")
    other = ask(app, "배고파")
    done = ask(app, "점심 뭐 먹지", status=REVIEWED)
    auth.login()
    html = client.get("/admin/queue/").get_data(as_text=True)
    assert html.count('href="/admin/queue/group?') == 2  # two groups of unreviewed questions
    first = client.get("/admin/queue/next")
    assert first.status_code == 302 and "/admin/queue/group?" in first.headers["Location"]
    page = client.get(first.headers["Location"]).get_data(as_text=True)
    assert "같은 질문 3건" in page and "몰라요" in page
    key = morph.question_key("점심 뭐 먹지?")
    response = client.post("/admin/queue/group", data={
        "csrf_token": token_in(page), "key": key, "skip": "0", "decision": "reviewed",
        "correction": "비빔밥 어때요?", "ids": [str(a), str(b), str(c), str(other)]})
    assert response.status_code == 302 and "/admin/queue/next" in response.headers["Location"]
    assert statuses(app)[a] == statuses(app)[b] == statuses(app)[c] == REVIEWED
    assert statuses(app)[other] == UNREVIEWED  # another group's row is never changed
    for row_id in (a, b, c):
        row = get_row(app, row_id)
        assert row.corrected_answer == "비빔밥 어때요?" and row.reviewer == "kim"
    assert get_row(app, done).reviewed_at is None  # an already reviewed row is left alone
    with app.app_context():
        corrections = app.extensions["chatbot.responder"].corrections
        assert corrections.lookup("점심 뭐 먹지?", key) == ("비빔밥 어때요?", 1.0)
        assert ("점심 뭐 먹지?", "비빔밥 어때요?") in training_pairs()
    log = audits(app)
    assert sorted(e[2] for e in log) == sorted([a, b, c])
    assert all(e[:2] == ("kim", "group") and e[3:] == (UNREVIEWED, REVIEWED, "비빔밥 어때요?") for e in log)


def test_a_row_that_arrived_after_the_page_was_shown_waits(app, client, auth, reviewer):
    seen = ask(app, "심심해")
    auth.login()
    page = client.get("/admin/queue/next", follow_redirects=True).get_data(as_text=True)
    late = ask(app, "심심해")
    client.post("/admin/queue/group", data={"csrf_token": token_in(page), "key": morph.question_key("심심해"),
                                            "decision": "needs_deletion", "ids": [str(seen)]})
    assert statuses(app) == {seen: NEEDS_DELETION, late: UNREVIEWED}


def test_next_unreviewed_flow_puts_disliked_first_and_skip_moves_on(app, client, auth, reviewer):
    big = [ask(app, "날씨 어때") for _ in range(3)]
    disliked = ask(app, "너 누구야", feedback=FEEDBACK_DOWN)
    auth.login()
    first = client.get("/admin/queue/next", follow_redirects=True).get_data(as_text=True)
    assert "같은 질문 1건" in first and "너 누구야" in first  # 👎 first, though the other group is bigger
    second = client.get("/admin/queue/next?skip=1", follow_redirects=True).get_data(as_text=True)
    assert "같은 질문 3건" in second and "날씨 어때" in second
    assert 'href="/admin/queue/next?skip=2"' in second  # skipping goes on to the next group
    done = client.get("/admin/queue/next?skip=2", follow_redirects=True).get_data(as_text=True)
    assert "건너뛴 것 말고는 검토할 대화가 없습니다" in done
    client.post("/admin/queue/group", data={"csrf_token": token_in(first), "key": morph.question_key("너 누구야"),
                                            "decision": "reviewed", "ids": [str(disliked)]})
    after = client.get("/admin/queue/next", follow_redirects=True).get_data(as_text=True)
    assert "날씨 어때" in after
    assert get_row(app, disliked).corrected_answer is None  # no correction typed: the answer stands
    assert statuses(app)[big[0]] == UNREVIEWED


def test_edits_and_bulk_actions_are_audited(app, client, auth, reviewer):
    row_id = add_exchange(app, "피곤해")
    auth.login()
    html = client.get(f"/admin/exchange/edit/?id={row_id}").get_data(as_text=True)
    client.post(f"/admin/exchange/edit/?id={row_id}", data={
        "csrf_token": token_in(html), "corrected_answer": "푹 쉬세요.", "status": UNREVIEWED})
    html = client.get(f"/admin/exchange/edit/?id={row_id}").get_data(as_text=True)
    client.post(f"/admin/exchange/edit/?id={row_id}", data={
        "csrf_token": token_in(html), "corrected_answer": "푹 쉬세요.", "status": REVIEWED})
    assert audits(app) == [("kim", "edit", row_id, UNREVIEWED, UNREVIEWED, "푹 쉬세요."),
                           ("kim", "status", row_id, UNREVIEWED, REVIEWED, "푹 쉬세요.")]
    page = client.get("/admin/audit/").get_data(as_text=True)
    assert "답변 수정" in page and "상태 변경" in page and "피곤해" in page and "kim" in page


def test_purge_deletes_needs_deletion_rows_and_keeps_them_in_the_audit(app, client, auth, reviewer):
    keep = ask(app, "고마워", status=REVIEWED)
    gone = [ask(app, "나쁜 말", status=NEEDS_DELETION), ask(app, "스팸", status=NEEDS_DELETION)]
    auth.login()
    home = client.get("/admin/").get_data(as_text=True)
    assert "삭제 필요 2건 영구 삭제" in home
    with app.app_context():
        pairs = training_pairs()
    assert ("고마워", "모르겠어요") in pairs  # the reviewed row is trained on,
    assert [q for q, _ in pairs if q in ("나쁜 말", "스팸")] == []  # the ones to delete never
    response = client.post("/admin/queue/purge", data={"csrf_token": token_in(home)}, follow_redirects=True)
    assert "2건을 영구히 지웠습니다" in response.get_data(as_text=True)
    assert list(statuses(app)) == [keep]
    assert sorted((e[1], e[2], e[3]) for e in audits(app)) == sorted(("purge", g, NEEDS_DELETION) for g in gone)
    assert client.post("/admin/queue/purge").status_code == 400  # CSRF token needed


def test_csv_import_and_export_in_the_admin(app, client, auth, reviewer):
    ask(app, "안녕", answer="안녕하세요", status=REVIEWED)
    auth.login()
    home = client.get("/admin/")
    csv_data = "Q,A,label\n잘 자,좋은 꿈 꾸세요.,0\n\"쉼표, 있는 질문\",답이에요,1\n한 칸만\n잘 자,좋은 꿈 꾸세요.,0\n"
    response = client.post("/admin/queue/import", data={
        "csrf_token": token_in(home.get_data(as_text=True)),
        "file": (io.BytesIO(csv_data.encode("utf-8")), "pairs.csv")},
        content_type="multipart/form-data", follow_redirects=True)
    text = response.get_data(as_text=True)
    assert "2쌍을 가져왔습니다" in text and "이미 있던 1쌍" in text and "잘못된 1줄" in text
    with app.app_context():
        imported = db.session.scalars(sa.select(Exchange).where(Exchange.route == ROUTE_IMPORT)).all()
        assert {(r.question, r.answer, r.status) for r in imported} == {
            ("잘 자", "좋은 꿈 꾸세요.", REVIEWED), ("쉼표, 있는 질문", "답이에요", REVIEWED)}

    bad = client.post("/admin/queue/import", data={
        "csrf_token": token_in(home.get_data(as_text=True)),
        "file": (io.BytesIO("Q,A\n질문,답\n".encode("cp949")), "korean-ansi.csv")},
        content_type="multipart/form-data", follow_redirects=True).get_data(as_text=True)
    assert "UTF-8" in bad and "아무것도 가져오지 않았습니다" in bad

    export = client.get("/admin/queue/export.csv")
    assert export.status_code == 200 and export.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in export.headers["Content-Disposition"]
    body = export.get_data(as_text=True).lstrip("\ufeff")
    assert body.splitlines()[0] == "Q,A,label"
    assert "안녕,안녕하세요," in body and '"쉼표, 있는 질문",답이에요,' in body


def test_audit_migration_upgrades_and_downgrades(app):
    import flask_migrate

    def tables():
        with app.app_context():
            return set(sa.inspect(db.engine).get_table_names())
    assert "review_audit" in tables()
    with app.app_context():
        flask_migrate.downgrade(revision="b6fd8427b9fc")
    assert "review_audit" not in tables() and "exchange" in tables()
    with app.app_context():
        flask_migrate.upgrade()
    assert "review_audit" in tables()
