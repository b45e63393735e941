"""What a correction will change, before it is saved (chatbot/reach.py,
issue 26 item 3): the past unreviewed questions it would answer at once,
with the real encoder and a tiny real model; then saved, the chats get
what the preview said."""
import pytest

from chatbot import batching, morph
from chatbot.database import REVIEWED, ROUTE_MEMORY, Exchange
from chatbot.extensions import db
from helpers import tiny_model, token_in

FORGOT = "비밀번호를 잊어버렸어요"
IN_OTHER_WORDS = "암호가 기억나지 않아요"  # no word in common with FORGOT; cosine 0.95
WEATHER = "오늘 날씨 좀 알려줘"  # near a training question (helpers.TINY_PAIRS: 날씨 어때)
ANSWER = "설정에서 비밀번호를 다시 만들 수 있어요."


def add(app, *questions):
    with app.app_context():
        rows = [Exchange(question=q, question_key=morph.question_key(q), answer="몰라요") for q in questions]
        db.session.add_all(rows)
        db.session.commit()
        return [row.id for row in rows]


@pytest.fixture
def app(make_app, request):
    """With a tiny model, unless a test's ``app`` parameter says False."""
    # A cut that keeps FORGOT and IN_OTHER_WORDS in groups of their own.
    app = make_app(CORRECTION_REFRESH_SECONDS=3600, QUEUE_MEANING_GROUPS=True, QUEUE_GROUP_SIMILARITY=0.99)
    if getattr(request, "param", True):
        tiny_model(app.config["MODEL_DIR"])
    return app


def reach(client, row_id, group=None):
    response = client.get(f"/admin/exchange/reach/?id={row_id}" + (f"&group={group}" if group else ""))
    assert response.status_code == 200, response.status_code
    return response.get_json()


def answer(app, question):
    with app.test_request_context():
        return app.extensions["chatbot.responder"].answer(question)


def test_a_correction_shows_the_past_questions_it_would_answer_and_they_get_it_once_saved(app, logged_in):
    [target] = add(app, FORGOT)
    add(app, IN_OTHER_WORDS, IN_OTHER_WORDS, WEATHER)
    app.extensions["chatbot.grouper"].catch_up()
    found = reach(logged_in, target)
    assert found["exchanges"] == 2 and found["window"] == app.config["CORRECTION_PREVIEW_ROWS"]
    [near] = found["nearest"]
    assert (near["question"], near["count"]) == (IN_OTHER_WORDS, 2) and 0.5 <= near["similarity"] <= 1
    assert answer(app, IN_OTHER_WORDS).text != ANSWER

    page = logged_in.get(f"/admin/exchange/edit/?id={target}").get_data(as_text=True)
    assert f'data-url="/admin/exchange/reach/?id={target}"' in page
    logged_in.post(f"/admin/exchange/edit/?id={target}", data={
        "csrf_token": token_in(page), "corrected_answer": ANSWER, "status": REVIEWED})
    reply = answer(app, IN_OTHER_WORDS)
    assert (reply.text, reply.route) == (ANSWER, ROUTE_MEMORY)  # what the preview said
    assert answer(app, WEATHER).text != ANSWER  # and what it did not


def test_a_question_near_nothing_unreviewed_reaches_nothing(app, logged_in):
    [target] = add(app, WEATHER)
    add(app, "고마워 정말")
    app.extensions["chatbot.grouper"].catch_up()
    assert reach(logged_in, target) == {"exchanges": 0, "nearest": [],
                                        "window": app.config["CORRECTION_PREVIEW_ROWS"]}


def test_a_groups_preview_leaves_out_the_groups_own_questions(app, logged_in):
    """The queue's group page asks for every question of the group: a past
    question of the same group is corrected with it, not reached."""
    ids = add(app, FORGOT, IN_OTHER_WORDS)
    app.extensions["chatbot.grouper"].catch_up()
    key = morph.question_key(IN_OTHER_WORDS)
    assert [r["question"] for r in reach(logged_in, ids[1], group=key)["nearest"]] == [FORGOT]
    page = logged_in.get(f"/admin/queue/group?key={key}").get_data(as_text=True)
    assert "/admin/exchange/reach/?id=" in page and "group=" in page
    with app.app_context():  # one group of both: nothing outside it to reach
        db.session.execute(db.text("UPDATE question_group SET group_key = :g"), {"g": key})
        db.session.commit()
    assert reach(logged_in, ids[1], group=key)["exchanges"] == 0


@pytest.mark.parametrize("app", [False], indirect=True)
def test_without_a_model_the_preview_follows_the_word_rule(app, client, reviewer, auth):
    """No model: a reviewed answer reaches the questions whose keys share
    enough words (CORRECTION_MIN_SIMILARITY), as Corrections.lookup does."""
    assert app.extensions["chatbot.responder"].model() is None
    [target] = add(app, "점심 뭐 먹지?")
    add(app, "오늘 점심 뭐 먹지?", "비 와")
    auth.login()
    found = reach(client, target)
    assert found["exchanges"] == 1 and [r["question"] for r in found["nearest"]] == ["오늘 점심 뭐 먹지?"]
    page = client.get(f"/admin/exchange/edit/?id={target}").get_data(as_text=True)
    client.post(f"/admin/exchange/edit/?id={target}", data={
        "csrf_token": token_in(page), "corrected_answer": "비빔밥 어때요?", "status": REVIEWED})
    assert answer(app, "오늘 점심 뭐 먹지?").text == "비빔밥 어때요?"
    assert answer(app, "비 와").text != "비빔밥 어때요?"


def test_the_preview_is_refused_when_the_model_threads_are_busy_and_404_for_no_exchange(app, logged_in,
                                                                                         monkeypatch):
    [target] = add(app, FORGOT)
    assert logged_in.get("/admin/exchange/reach/?id=999").status_code == 404
    responder = app.extensions["chatbot.responder"]
    monkeypatch.setattr(responder, "_suggesting", batching.threading.BoundedSemaphore(1))
    responder._suggesting.acquire()  # another reviewer's suggestions hold the one slot
    response = logged_in.get(f"/admin/exchange/reach/?id={target}")
    assert response.status_code == 503 and response.get_json() == {"error": "busy"}
