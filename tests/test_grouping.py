"""The review queue's groups by meaning (chatbot/grouping.py): paraphrases
are one group with one correction, a key that does not belong is split off,
the groups are made incrementally in the background and kept in the
database, bounded, and without the encoder the queue groups by exact key.

The real encoder (e5-small).  Its cosines for the questions used here:
배고파 / 배고파 죽겠어 0.94, 배고파 / 너무 배고프다 0.90, and at most 0.86
between any of those and 오늘 날씨 어때, 안녕하세요 or 심심해; so at a cut of
0.89 the three hungry questions are one group and the others are alone.
"""
import re
import time
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from chatbot import morph
from chatbot.database import REVIEWED, UNREVIEWED, Exchange, QuestionGroup, ReviewAudit, insert_new
from chatbot.extensions import db
from chatbot.grouping import Grouper
from chatbot.queue_admin import unreviewed_groups

from helpers import connect, get_row, statuses, token_in
from helpers import ask as ask_socket

HUNGRY = ("배고파", "너무 배고프다", "배고파 죽겠어")
OTHERS = ("오늘 날씨 어때", "안녕하세요", "심심해")
CUT = 0.89


@pytest.fixture
def app(make_app):
    return make_app(QUEUE_MEANING_GROUPS=True, QUEUE_GROUP_SIMILARITY=CUT)


def add(app, *questions, **fields):
    """Unreviewed exchanges of ``questions``; their ids."""
    with app.app_context():
        rows = [Exchange(question=q, question_key=morph.question_key(q), answer="모르겠어요", **fields)
                for q in questions]
        db.session.add_all(rows)
        db.session.commit()
        return [row.id for row in rows]


def group_of(app):
    """{question_key: group_key} as stored."""
    with app.app_context():
        return dict(db.session.execute(sa.select(QuestionGroup.question_key, QuestionGroup.group_key)).all())


def catch_up(app):
    return app.extensions["chatbot.grouper"].catch_up()


def queue(app):
    """[(group key, rows, sorted keys)] in queue order."""
    with app.app_context():
        return [(g.key, g.count, sorted(k for k, _ in g.keys)) for g in unreviewed_groups()]


def key(question):
    return morph.question_key(question)


def test_paraphrases_are_one_group_in_the_queue_and_one_correction_reaches_them_all(app, client, auth, reviewer):
    hungry = add(app, "배고파", "배고파", "너무 배고프다", "배고파 죽겠어")
    others = add(app, *OTHERS)
    assert catch_up(app) == 7
    assert queue(app)[0] == (key("배고파"), 4, sorted(key(q) for q in HUNGRY))
    assert sorted(len(keys) for _, _, keys in queue(app)) == [1, 1, 1, 3]

    auth.login()
    page = client.get("/admin/queue/").get_data(as_text=True)
    assert page.count('href="/admin/queue/group?') == 4
    assert "(2)" in page  # 배고파, asked twice, the group's most frequent question
    group_page = client.get("/admin/queue/next").headers["Location"]
    html = client.get(group_page).get_data(as_text=True)
    assert "같은 질문 4건" in html and "뜻이 같아 묶인 질문 3가지" in html
    assert all(q in html for q in HUNGRY) and not any(q in html for q in OTHERS)
    response = client.post("/admin/queue/group", data={
        "csrf_token": token_in(html), "key": key("배고파"), "skip": "0", "decision": "reviewed",
        "correction": "뭐라도 좀 드세요.", "ids": [str(i) for i in hungry + others]})
    assert response.status_code == 302
    assert [statuses(app)[i] for i in hungry] == [REVIEWED] * 4
    assert [statuses(app)[i] for i in others] == [UNREVIEWED] * 3  # other groups' rows are never changed
    assert {get_row(app, i).corrected_answer for i in hungry} == {"뭐라도 좀 드세요."}
    with app.app_context():
        logged = db.session.scalars(sa.select(ReviewAudit.exchange_id).where(ReviewAudit.action == "group")).all()
    assert sorted(logged) == sorted(hungry)


def test_a_key_that_does_not_belong_is_split_off_with_one_click_and_audited(app, client, auth, reviewer):
    add(app, "배고파", "너무 배고프다", "배고파 죽겠어", "배고파 죽겠어", "심심해")  # 심심해: a leader stored later
    catch_up(app)
    auth.login()
    html = client.get(f"/admin/queue/group?key={key('배고파')}").get_data(as_text=True)
    form = {"csrf_token": token_in(html), "key": key("배고파"), "member": key("너무 배고프다"), "skip": "0"}
    assert client.post("/admin/queue/split", data={**form, "csrf_token": ""}).status_code == 400  # CSRF
    response = client.post("/admin/queue/split", data=form)
    assert response.status_code == 302 and "/admin/queue/group?" in response.headers["Location"]
    assert group_of(app)[key("너무 배고프다")] == key("너무 배고프다")
    assert sorted(keys for _, _, keys in queue(app)) == sorted([[key("너무 배고프다")], [key("심심해")],
                                                                 sorted([key("배고파"), key("배고파 죽겠어")])])
    with app.app_context():
        [entry] = db.session.scalars(sa.select(ReviewAudit).where(ReviewAudit.action == "split")).all()
    assert (entry.reviewer, entry.question) == ("kim", "너무 배고프다")
    assert "묶음에서 분리" in client.get("/admin/audit/").get_data(as_text=True)
    # It leads a group now, in this process too: a paraphrase of it joins it
    # (0.99 to it; 0.89 to 배고파, below the cut).
    add(app, "정말 너무 배고프다")
    catch_up(app)
    assert group_of(app)[key("정말 너무 배고프다")] == key("너무 배고프다")
    # Split again: it is no longer in that group; nothing changes.
    again = client.post("/admin/queue/split", data=form, follow_redirects=True).get_data(as_text=True)
    assert "아무것도 바꾸지 않았습니다" in again


def test_splitting_a_groups_leader_keeps_the_rest_together(app, client, auth, reviewer):
    add(app, "배고파", "너무 배고프다", "배고파 죽겠어")
    catch_up(app)
    auth.login()
    html = client.get(f"/admin/queue/group?key={key('배고파')}").get_data(as_text=True)
    response = client.post("/admin/queue/split", data={
        "csrf_token": token_in(html), "key": key("배고파"), "member": key("배고파"), "skip": "0"})
    rest = key("너무 배고프다")  # the oldest of the others leads them now
    location = urlsplit(response.headers["Location"])
    assert location.path == "/admin/queue/group" and parse_qs(location.query)["key"] == [rest]
    assert sorted(keys for _, _, keys in queue(app)) == sorted([[key("배고파")], sorted([rest, key("배고파 죽겠어")])])
    # Another process (a new Grouper) reads the new leader: a paraphrase joins it.
    other = Grouper(app, lambda fn, *args: fn(*args))
    add(app, "배고파 죽겠다")
    other.catch_up()
    assert group_of(app)[key("배고파 죽겠다")] in (key("배고파"), rest)


def test_split_and_the_group_pages_need_a_reviewer(app, client):
    add(app, "배고파", "배고파 죽겠어")
    catch_up(app)
    token = token_in(client.get("/login").get_data(as_text=True))
    response = client.post("/admin/queue/split", data={
        "csrf_token": token, "key": key("배고파"), "member": key("배고파 죽겠어")})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert group_of(app)[key("배고파 죽겠어")] == key("배고파")


def test_groups_are_made_incrementally_and_another_process_joins_them(app):
    add(app, "배고파", "오늘 날씨 어때")
    assert catch_up(app) == 2
    asked = _embedded()
    assert catch_up(app) == 0 and _embedded() == asked  # nothing read or embedded again
    add(app, "배고파", "배고파 죽겠어")
    assert catch_up(app) == 2
    assert group_of(app)[key("배고파 죽겠어")] == key("배고파")
    assert _embedded() == asked + 1  # the new key only

    # A second process: its own Grouper, the same database.
    other = Grouper(app, lambda fn, *args: fn(*args))
    add(app, "너무 배고프다")
    assert other.catch_up() == 5  # it reads the queue's window once (all keys grouped but one)
    assert group_of(app)[key("너무 배고프다")] == key("배고파")
    assert len(group_of(app)) == 4


def _embedded():
    """The questions the encoder was asked for (from its cache or not)."""
    from chatbot import meaning

    status = meaning.encoder().status()
    return status["hits"] + status["misses"]


def test_a_chat_groups_its_question_in_the_background(app):
    sock = connect(app)
    for question in ("배고파", "배고파 죽겠어"):
        assert ask_socket(sock, question)[0] == "reply"
    deadline = time.monotonic() + 30
    while len(group_of(app)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_of(app) == {key("배고파"): key("배고파"), key("배고파 죽겠어"): key("배고파")}


def test_only_questions_the_encoder_must_work_for_wait_for_a_pause(app, monkeypatch):
    """Grouping waits for a pause in the chats and pages before each few
    questions it embeds (batching.wait_for_pause), but not for questions
    the encoder has in its cache: a chat's own question costs nothing."""
    from chatbot import grouping, meaning

    waits = []
    monkeypatch.setattr(grouping, "wait_for_pause", lambda: waits.append(1))
    meaning.encoder().embed(["배고파"])  # as the chat that asked it did
    add(app, "배고파")
    catch_up(app)
    assert waits == [] and key("배고파") in group_of(app)
    new = ("기차 시간표 좀 찾아줄래 (그룹 대기)", "고양이 사진 보여줄래 (그룹 대기)")  # asked by no other test
    add(app, *new)
    catch_up(app)
    assert len(waits) == 1 and set(group_of(app)) == {key(q) for q in ("배고파", *new)}


def test_the_table_and_the_leaders_are_bounded(make_app):
    app = make_app(QUEUE_MEANING_GROUPS=True, QUEUE_GROUP_SIMILARITY=CUT, QUEUE_GROUP_ROWS=3,
                   QUEUE_GROUP_LEADERS=2)
    add(app, "배고파", *OTHERS)
    catch_up(app)
    grouper = app.extensions["chatbot.grouper"]
    assert len(group_of(app)) == 3 and key("배고파") not in group_of(app)  # the oldest went
    assert grouper.leaders.keys == [key(q) for q in OTHERS[1:]]  # the newest two
    # 배고파's group is gone from memory: a paraphrase now leads its own.
    add(app, "배고파 죽겠어")
    catch_up(app)
    assert group_of(app)[key("배고파 죽겠어")] == key("배고파 죽겠어")
    # A restarted process reads the newest leaders only, not every stored one.
    restarted = Grouper(app, lambda fn, *a: fn(*a))
    read = []
    add_leaders = restarted.leaders.add
    restarted.leaders.add = lambda keys, vectors: (read.append(list(keys)), add_leaders(keys, vectors))
    with app.app_context(), db.engine.connect() as connection:
        restarted._read_leaders(connection, "e5-small")  # what its first step does first
    assert read == [[key("심심해"), key("배고파 죽겠어")]]  # of the three leaders stored
    assert restarted.leaders.keys == [key("심심해"), key("배고파 죽겠어")]


@pytest.mark.parametrize("config", [{"QUEUE_MEANING_GROUPS": False}, {"MEANING_ENCODER": "off"}])
def test_without_meaning_the_queue_groups_by_exact_key(make_app, config):
    app = make_app(QUEUE_GROUP_SIMILARITY=CUT, **{"QUEUE_MEANING_GROUPS": True, **config})
    add(app, "배고파", "배고파", "배고파 죽겠어")
    assert catch_up(app) == 0
    app.extensions["chatbot.grouper"].nudge()
    assert app.extensions["chatbot.grouper"]._worker is None  # no work started
    assert group_of(app) == {}
    assert queue(app) == [(key("배고파"), 2, [key("배고파")]), (key("배고파 죽겠어"), 1, [key("배고파 죽겠어")])]


def test_a_broken_encoder_leaves_the_exact_keys(make_app, tmp_path):
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"not a model")
    app = make_app(QUEUE_MEANING_GROUPS=True, MEANING_MODEL_FILE=str(broken))
    add(app, "배고파", "배고파 죽겠어")
    assert catch_up(app) == 0 and group_of(app) == {}
    assert sorted(g[0] for g in queue(app)) == sorted([key("배고파"), key("배고파 죽겠어")])


def test_the_home_page_links_the_groups_with_the_most_thumbs_down_and_unsure(app, client, auth, reviewer):
    from chatbot.database import FEEDBACK_DOWN, ROUTE_UNSURE

    add(app, "배고파", "배고파 죽겠어", route=ROUTE_UNSURE)
    add(app, "배고파 죽겠어", feedback=FEEDBACK_DOWN)
    add(app, "심심해", feedback=FEEDBACK_DOWN)
    add(app, "오늘 날씨 어때", "오늘 날씨 어때", "오늘 날씨 어때", "오늘 날씨 어때")  # big, but nothing flagged
    catch_up(app)
    auth.login()
    html = client.get("/admin/").get_data(as_text=True)
    table = html[html.index('id="flagged-groups"'):html.index("</table>", html.index('id="flagged-groups"'))]
    links = [urlsplit(href.replace("&amp;", "&")) for href in re.findall(r'href="([^"]+)">이 묶음 검토', table)]
    assert [parse_qs(link.query)["key"] for link in links] == [[key("배고파")], [key("심심해")]]
    assert "오늘 날씨 어때" not in table
    # The link opens that group; once it is reviewed, "next" opens the queue's first.
    assert [parse_qs(link.query).get("skip") for link in links] == [None, None]
    page = client.get(links[0].path + "?" + links[0].query).get_data(as_text=True)
    assert "같은 질문 3건" in page and "배고파 죽겠어" in page


def test_two_processes_group_the_same_keys_on_postgresql(make_app, postgres):
    """PostgreSQL: a process storing a key another one stored first (both
    read its row before either stored it) keeps the first row and does not
    fail; a second process then reads the first's leaders."""
    app = make_app(SQLALCHEMY_DATABASE_URI=postgres.create_database("grouping"), QUEUE_MEANING_GROUPS=True,
                   QUEUE_GROUP_SIMILARITY=CUT)
    add(app, "배고파", "심심해")
    assert catch_up(app) == 2
    second = Grouper(app, lambda fn, *a: fn(*a))
    with app.app_context(), db.engine.connect() as connection:
        insert_new(connection, QuestionGroup.__table__, [{"question_key": key("심심해"), "group_key": key("배고파"), "encoder": "e5-small",
                                     "vector": bytes(768), "created_at": datetime(2026, 12, 1)}])
        connection.commit()
    add(app, "배고파 죽겠어")
    assert second.catch_up() == 3
    assert group_of(app) == {key("배고파"): key("배고파"), key("배고파 죽겠어"): key("배고파"),
                             key("심심해"): key("심심해")}
    with app.app_context():
        db.engine.dispose()


def test_the_analytics_top_groups_and_their_review_list_link_use_the_same_groups(app, client, auth, reviewer):
    from chatbot import analytics
    from chatbot.database import FEEDBACK_DOWN, ROUTE_UNSURE

    add(app, "배고파", route=ROUTE_UNSURE)
    add(app, "배고파 죽겠어", "너무 배고프다", feedback=FEEDBACK_DOWN)
    add(app, "심심해", feedback=FEEDBACK_DOWN)
    catch_up(app)
    today = datetime.utcnow().date()
    with app.app_context():
        found = analytics.top_groups(analytics.Span(today, today, "day"))
    assert [(g["question_key"], g["wrong"], g["down"], g["unsure"]) for g in found] == [
        (key("배고파"), 3, 2, 1), (key("심심해"), 1, 1, 0)]
    assert found[0]["question"] in HUNGRY
    auth.login()
    html = client.get("/admin/analytics/").get_data(as_text=True)
    link = re.search(r'<a href="(/admin/exchange/\?flt0_\d+=[^"]+)" class="review-text">', html).group(1)
    listing = client.get(link.replace("&amp;", "&")).get_data(as_text=True)
    assert all(q in listing for q in HUNGRY) and "심심해" not in listing
