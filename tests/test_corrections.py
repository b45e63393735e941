"""Reviewers' corrections answer differently worded questions at once
(chatbot/corrections.py): through the chat, with the changes made in the
admin as a reviewer makes them."""
import io
import time
from pathlib import Path

import pytest

from chatbot import morph
from chatbot.database import NEEDS_DELETION, REVIEWED, ROUTE_KNOWN, ROUTE_MEMORY, UNREVIEWED, Exchange, audit
from chatbot.extensions import db
from helpers import add_reviewed, ask, connect, tiny_model, token_in

QUESTION = "춘천에는 비가 와요?"
PARAPHRASE = "오늘 춘천에 비 와요?"  # other words and particles, the same question
CORRECTION = "춘천은 오늘 맑아요."
DISSIMILAR = ("서울에는 비가 와요?", "춘천 날씨 어때요?", "오늘 점심 뭐 먹지?", "비행기 표 예매해 줘")


@pytest.fixture
def app(make_app):
    """Changes made elsewhere are looked for only hourly: whatever a test sees
    at once comes from this process's own commits."""
    app = make_app(CORRECTION_REFRESH_SECONDS=3600)
    tiny_model(app.config["MODEL_DIR"])
    return app


def reply(sock, text):
    name, data = ask(sock, {"text": text})
    assert name == "reply", data
    return data


def token(client):
    return token_in(client.get("/admin/exchange/").get_data(as_text=True))


def edit(client, row_id, correction, status=REVIEWED):
    """Save the admin's edit form, as a reviewer does."""
    response = client.post(f"/admin/exchange/edit/?id={row_id}", data={
        "csrf_token": token(client), "corrected_answer": correction, "status": status})
    assert response.status_code == 302, response.get_data(as_text=True)


def bulk(client, action, ids):
    response = client.post("/admin/exchange/action/", data={
        "csrf_token": token(client), "action": action, "rowid": [str(i) for i in ids], "url": "/admin/exchange/"})
    assert response.status_code == 302


def corrected(app, logged_in, sock):
    """QUESTION asked once and corrected to CORRECTION in the edit form; its row id.

    The paraphrase is asked first, so the process has built its index
    before the correction and must notice the change."""
    assert reply(sock, PARAPHRASE)["route"] != ROUTE_MEMORY
    first = reply(sock, QUESTION)
    edit(logged_in, first["id"], CORRECTION)
    return first["id"]


@pytest.mark.parametrize("matcher", ["words", "meaning"])
def test_a_correction_answers_a_differently_worded_question_at_once(app, logged_in, matcher):
    """By words (a model trained with meaning off) and by meaning.  By
    meaning the first two of DISSIMILAR are near: 춘천 날씨 어때요? scores
    0.81 against 춘천에는 비가 와요? (and 춘천은 오늘 맑아요 answers it
    well), 서울에는 비가 와요? 0.52, at CORRECTION_MEANING_SIMILARITY 0.5:
    the encoder hears two places as alike (README, "What each part
    contributes")."""
    if matcher == "words":
        tiny_model(app.config["MODEL_DIR"], meaning="off")
    current = Path(app.config["MODEL_DIR"]) / "current"
    assert (current / "meaning.npy").exists() == (matcher == "meaning")
    sock = connect(app)
    before = reply(sock, PARAPHRASE)
    assert before["answer"] != CORRECTION
    corrected(app, logged_in, sock)
    after = reply(sock, PARAPHRASE)
    assert (after["answer"], after["route"]) == (CORRECTION, ROUTE_MEMORY)
    assert reply(sock, QUESTION)["answer"] == CORRECTION
    for text in DISSIMILAR[2:] if matcher == "meaning" else DISSIMILAR:
        other = reply(sock, text)
        assert other["route"] != ROUTE_MEMORY and other["answer"] != CORRECTION, text


def test_an_empty_question_key_answers_nothing(app):
    """A reviewed row with the empty key (an invisible-only question stored
    before they were refused) must not answer symbol-only questions."""
    with app.app_context():
        db.session.add(Exchange(question="\u200b\u200b", question_key="", answer="틀린 답",
                                corrected_answer=CORRECTION, status=REVIEWED))
        db.session.commit()
        assert app.extensions["chatbot.responder"].corrections.lookup("", key="") is None
    sock = connect(app)
    for text in ("?!", "😀", "..."):
        answer = reply(sock, text)
        assert answer["route"] != ROUTE_MEMORY and answer["answer"] != CORRECTION, text


def test_a_correction_of_a_symbol_only_question_answers_only_that_question(app, logged_in):
    sock = connect(app)
    assert reply(sock, "😀")["route"] != ROUTE_MEMORY
    edit(logged_in, reply(sock, "?!")["id"], CORRECTION)
    assert (reply(sock, "?!")["answer"], reply(sock, "? !")["route"]) == (CORRECTION, ROUTE_MEMORY)
    for text in ("😀", "...", "ㅋㅋ"):
        answer = reply(sock, text)
        assert answer["route"] != ROUTE_MEMORY and answer["answer"] != CORRECTION, text


def test_a_correction_wins_over_a_training_answer(app, logged_in):
    sock = connect(app)
    before = reply(sock, "오늘 점심 뭐 먹지?")
    assert (before["answer"], before["route"]) == ("김치찌개 어때요?", ROUTE_KNOWN)  # helpers.TINY_PAIRS: 뭐 먹지
    edit(logged_in, reply(sock, "점심 뭐 먹지?")["id"], "비빔밥 어때요?")
    after = reply(sock, "오늘 점심 뭐 먹지?")
    assert (after["answer"], after["route"]) == ("비빔밥 어때요?", ROUTE_MEMORY)


def test_what_lookup_reports(app):
    """The same key is certain; a paraphrase is close; a word no reviewed
    question has makes a question less alike; 1.01 leaves only the same key."""
    with app.app_context():
        db.session.add(Exchange(question=QUESTION, question_key=morph.question_key(QUESTION), answer="틀린 답",
                                corrected_answer=CORRECTION, status=REVIEWED))
        db.session.commit()
        corrections = app.extensions["chatbot.responder"].corrections
        assert corrections.lookup("춘천 비 와요!!") == (CORRECTION, 1.0)
        answer, similarity = corrections.lookup(PARAPHRASE)
        assert answer == CORRECTION and corrections.min_similarity <= similarity < 1.0
        corrections.min_similarity = 0.0
        _, with_unknown = corrections.lookup(PARAPHRASE + " 양자역학")
        assert with_unknown < similarity
        corrections.min_similarity = 1.01
        assert corrections.lookup(PARAPHRASE) is None
        assert corrections.lookup(QUESTION) == (CORRECTION, 1.0)


@pytest.mark.parametrize("action, status", [("mark_unreviewed", UNREVIEWED),
                                            ("mark_needs_deletion", NEEDS_DELETION)])
def test_marking_it_back_takes_it_away_at_once(app, logged_in, action, status):
    sock = connect(app)
    row_id = corrected(app, logged_in, sock)
    assert reply(sock, PARAPHRASE)["answer"] == CORRECTION
    bulk(logged_in, action, [row_id])
    with app.app_context():
        assert db.session.get(Exchange, row_id).status == status
    for text in (PARAPHRASE, QUESTION):
        again = reply(sock, text)
        assert again["route"] != ROUTE_MEMORY and again["answer"] != CORRECTION, text


def test_editing_the_correction_changes_it_at_once(app, logged_in):
    sock = connect(app)
    row_id = corrected(app, logged_in, sock)
    assert reply(sock, PARAPHRASE)["answer"] == CORRECTION
    edit(logged_in, row_id, "춘천은 오후부터 비가 와요.")  # still 검토 완료: only the answer changes
    for text in (PARAPHRASE, QUESTION):
        assert (reply(sock, text)["answer"], reply(sock, text)["route"]) == ("춘천은 오후부터 비가 와요.", ROUTE_MEMORY)


def test_the_newest_correction_of_a_question_wins(app, logged_in):
    """Two rows of one question key, corrected differently: the one reviewed
    last answers, even when it is the older row."""
    sock = connect(app)
    assert reply(sock, PARAPHRASE)["route"] != ROUTE_MEMORY
    older = reply(sock, QUESTION)
    newer = reply(sock, "춘천에 비가 와요")  # the same key
    edit(logged_in, newer["id"], "우산 챙기세요.")
    assert reply(sock, PARAPHRASE)["answer"] == "우산 챙기세요."
    edit(logged_in, older["id"], CORRECTION)
    for text in (PARAPHRASE, QUESTION):
        assert reply(sock, text)["answer"] == CORRECTION, text


def test_imported_pairs_answer_similar_questions_at_once(app, logged_in):
    sock = connect(app)
    assert reply(sock, PARAPHRASE)["route"] != ROUTE_MEMORY
    home = logged_in.get("/admin/").get_data(as_text=True)
    csv_data = f"Q,A,label\n{QUESTION},{CORRECTION},0\n"
    response = logged_in.post("/admin/queue/import", data={
        "csrf_token": token_in(home), "file": (io.BytesIO(csv_data.encode("utf-8")), "pairs.csv")},
        content_type="multipart/form-data", follow_redirects=True)
    assert "1쌍을 가져왔습니다" in response.get_data(as_text=True)
    assert (reply(sock, PARAPHRASE)["answer"], reply(sock, PARAPHRASE)["route"]) == (CORRECTION, ROUTE_MEMORY)


def test_another_process_changes_are_seen_within_the_refresh_interval(make_app):
    """Another process's change reaches this one through the database alone:
    a second app on the same file stands for it (its commits nudge only its
    own index).  Editing the correction keeps the reviewed rows' count and
    newest id; the audit row it writes is what shows the change."""
    here = make_app(CORRECTION_REFRESH_SECONDS=0.5)
    there = make_app(CORRECTION_REFRESH_SECONDS=0.5)
    corrections = here.extensions["chatbot.responder"].corrections

    def answer_within(expected, seconds=5):
        """The answer `here` gives the paraphrase, once it is `expected` or after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            with here.app_context():
                found = corrections.lookup(PARAPHRASE)
            answer = found[0] if found else None
            if answer == expected or time.monotonic() > deadline:
                return answer
            time.sleep(0.05)

    assert answer_within(None, 0) is None  # built, before the change
    with there.app_context():
        row = Exchange(question=QUESTION, question_key=morph.question_key(QUESTION), answer="틀린 답")
        db.session.add(row)
        db.session.commit()
        row.corrected_answer = CORRECTION
        row.mark(REVIEWED, "kim")
        db.session.commit()
        row_id = row.id
    assert answer_within(CORRECTION) == CORRECTION

    with there.app_context():
        row = db.session.get(Exchange, row_id)
        row.corrected_answer = "춘천은 흐려요."
        audit(row, "edit", "kim", old_status=row.status)  # as the edit form does
        db.session.commit()
    assert answer_within("춘천은 흐려요.") == "춘천은 흐려요."


@pytest.mark.parametrize("min_confidence, route", [(0.99, ROUTE_MEMORY), (0, ROUTE_KNOWN)])
def test_a_weaker_match_answers_only_what_the_bot_would_not_know(make_app, min_confidence, route):
    """By words: between CORRECTION_UNSURE_SIMILARITY and
    CORRECTION_MIN_SIMILARITY a correction replaces "잘 모르겠어요", never a
    reply the bot is sure of.  (By meaning: test_meaning_corrections.py.)"""
    app = make_app(CORRECTION_REFRESH_SECONDS=3600, MIN_CONFIDENCE=min_confidence, UNSURE_REPLIES=["모름"])
    tiny_model(app.config["MODEL_DIR"], meaning="off")
    near, far = "춘천에는 눈이 와요?", "비행기 표 예매해 줘"
    add_reviewed(app, QUESTION, CORRECTION)
    with app.app_context():
        corrections = app.extensions["chatbot.responder"].corrections
        similarity = corrections.lookup(near, min_similarity=0)[1]
        assert app.config["CORRECTION_UNSURE_SIMILARITY"] <= similarity < app.config["CORRECTION_MIN_SIMILARITY"]
        assert corrections.lookup(far, min_similarity=0)[1] < app.config["CORRECTION_UNSURE_SIMILARITY"]
    sock = connect(app)
    answer = reply(sock, near)
    if route == ROUTE_MEMORY:
        assert (answer["answer"], answer["route"]) == (CORRECTION, ROUTE_MEMORY)
        assert (reply(sock, far)["answer"], reply(sock, far)["route"]) == ("모름", "unsure")
    else:  # the bot answers everything itself: the weak match is not used
        assert answer["route"] != ROUTE_MEMORY and answer["answer"] != CORRECTION
