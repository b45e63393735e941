"""Suggested answers on an exchange's edit page (issue 26, item 2): the
answers of the questions nearest by meaning, training pairs and reviewed
answers alike, with the real encoder and a tiny real model."""
import pytest

from chatbot import batching, suggest
from chatbot.database import REVIEWED
from helpers import add_exchange, add_reviewed, get_row, tiny_model, token_in

FORGOT = "비밀번호를 잊어버렸어요"
IN_OTHER_WORDS = "암호가 기억나지 않아요"  # no content word in common with FORGOT
ANSWER = "설정에서 비밀번호를 다시 만들 수 있어요."


@pytest.fixture
def app(make_app):
    app = make_app(CORRECTION_REFRESH_SECONDS=3600)
    tiny_model(app.config["MODEL_DIR"])
    return app


def suggestions(app, question):
    with app.test_request_context():
        return app.extensions["chatbot.responder"].suggestions(question)


def test_a_paraphrase_of_a_reviewed_question_is_offered_its_answer_first(app):
    add_reviewed(app, FORGOT, ANSWER)
    found = suggestions(app, IN_OTHER_WORDS)
    assert found[0].answer == ANSWER and found[0].source == suggest.SOURCE_REVIEWED
    assert found[0].question == FORGOT
    assert len(found) == suggest.SUGGESTIONS
    assert len({s.answer for s in found}) == len(found)  # distinct answers
    assert [s.similarity for s in found] == sorted((s.similarity for s in found), reverse=True)
    assert 0 < found[-1].similarity <= found[0].similarity <= 1


def test_a_paraphrase_of_a_training_question_is_offered_its_answer(app):
    """helpers.TINY_PAIRS: 배고파 -> 맛있는 거 드세요."""
    for question in ("너무 배고프다", "배가 너무 고파요"):
        found = suggestions(app, question)
        assert "맛있는 거 드세요." in [s.answer for s in found], (question, found)
        assert all(s.source == suggest.SOURCE_TRAINING for s in found)  # nothing reviewed yet


def test_the_suggestions_follow_meaning_not_the_first_rows(app):
    """Two unrelated questions get different first suggestions, each its own."""
    assert suggestions(app, "안녕하세요 반갑습니다")[0].answer == "안녕하세요! 반가워요."
    assert suggestions(app, "오늘 날씨 좀 알려줘")[0].answer == "맑고 따뜻해요."


def suggested(client, row_id):
    """What the edit page's panel fetches (review.js): (answer, source label) of each suggestion."""
    response = client.get(f"/admin/exchange/suggest/?id={row_id}")
    assert response.status_code == 200
    return [(s["answer"], s["source_label"]) for s in response.get_json()["suggestions"]]


def test_the_edit_page_names_its_suggestions_which_come_as_plain_text(app, logged_in):
    """The page names the JSON to fetch and the box to fill; the answers come
    as they were written (review.js puts them in as text: the browser test
    shows markup staying text)."""
    add_reviewed(app, FORGOT, "<b>설정</b>에서 바꾸세요")
    row_id = add_exchange(app, IN_OTHER_WORDS, answer="틀린 답")
    html = logged_in.get(f"/admin/exchange/edit/?id={row_id}").get_data(as_text=True)
    assert "추천 답변" in html
    assert f'data-url="/admin/exchange/suggest/?id={row_id}"' in html and 'data-target="corrected_answer"' in html
    found = suggested(logged_in, row_id)
    assert len(found) == suggest.SUGGESTIONS
    assert found[0] == ("<b>설정</b>에서 바꾸세요", "검토된 답변") and "<b>설정</b>" not in html
    assert {label for _, label in found} == {"검토된 답변", "학습 데이터"}


def test_taking_a_suggestion_is_saved_like_any_correction(app, logged_in):
    """The click only fills the box (review.js); what is saved is the form,
    with its CSRF token, as before."""
    add_reviewed(app, FORGOT, ANSWER)
    row_id = add_exchange(app, IN_OTHER_WORDS, answer="틀린 답")
    html = logged_in.get(f"/admin/exchange/edit/?id={row_id}").get_data(as_text=True)
    assert (ANSWER, "검토된 답변") in suggested(logged_in, row_id)
    response = logged_in.post(f"/admin/exchange/edit/?id={row_id}", data={
        "csrf_token": token_in(html), "corrected_answer": ANSWER, "status": REVIEWED})
    assert response.status_code == 302
    assert (get_row(app, row_id).corrected_answer, get_row(app, row_id).status) == (ANSWER, REVIEWED)


def test_with_every_suggestion_slot_taken_there_are_none_at_once(app, logged_in):
    """Suggestions take at most one model thread each and never queue: with
    every slot held (other reviewers' pages), none come, at once, and the
    page still opens with its form."""
    row_id = add_exchange(app, IN_OTHER_WORDS, answer="틀린 답")
    slots = app.extensions["chatbot.responder"]._suggesting
    held = 0
    while slots.acquire(blocking=False):
        held += 1
    try:
        assert held >= 1
        with pytest.raises(batching.Busy):
            suggestions(app, IN_OTHER_WORDS)
        assert suggested(logged_in, row_id) == []
        page = logged_in.get(f"/admin/exchange/edit/?id={row_id}")
        assert page.status_code == 200 and 'name="corrected_answer"' in page.get_data(as_text=True)
    finally:
        for _ in range(held):
            slots.release()
    assert len(suggested(logged_in, row_id)) == suggest.SUGGESTIONS


def test_the_answer_being_corrected_is_not_suggested(app, logged_in):
    """배가 너무 고파요 was answered 맛있는 거 드세요. (배고파's, the nearest):
    suggesting it back would waste one of the three."""
    assert "맛있는 거 드세요." in [s.answer for s in suggestions(app, "배가 너무 고파요")]
    row_id = add_exchange(app, "배가 너무 고파요", answer="맛있는 거 드세요.", corrected_answer="라면 어때요?")
    answers = [answer for answer, _ in suggested(logged_in, row_id)]
    assert len(answers) == suggest.SUGGESTIONS
    assert "맛있는 거 드세요." not in answers and "라면 어때요?" not in answers


def test_without_a_model_the_reviewed_answers_are_suggested_by_words(make_app):
    app = make_app(CORRECTION_REFRESH_SECONDS=3600)
    add_reviewed(app, "춘천 가는 길", "경춘선을 타세요.")
    found = suggestions(app, "춘천까지 가는 길 알려줘")
    assert [(s.answer, s.source) for s in found] == [("경춘선을 타세요.", suggest.SOURCE_REVIEWED)]
    assert suggestions(app, "양자역학") == []


def test_the_suggestions_as_json_for_the_queues_group_page(app, client, reviewer, auth):
    """/admin/exchange/suggest/?id= gives the same suggestions as JSON; the
    review queue's group page names it for review.js to fetch.  Reviewers
    only, like every admin page."""
    add_reviewed(app, FORGOT, "<b>설정</b>에서 바꾸세요")
    row_id = add_exchange(app, IN_OTHER_WORDS, answer="틀린 답")
    url = f"/admin/exchange/suggest/?id={row_id}"
    assert client.get(url).status_code == 302  # logged out: to the login page
    auth.login()
    data = client.get(url).get_json()["suggestions"]
    assert len(data) == suggest.SUGGESTIONS
    assert data[0] == {"answer": "<b>설정</b>에서 바꾸세요", "similarity": data[0]["similarity"],
                       "source": suggest.SOURCE_REVIEWED, "source_label": "검토된 답변", "question": FORGOT}
    assert client.get("/admin/exchange/suggest/?id=999999").status_code == 404
    from urllib.parse import quote

    page = client.get(f"/admin/queue/group?key={quote(IN_OTHER_WORDS)}").get_data(as_text=True)  # add_exchange's key
    assert f'data-url="{url.replace("&", "&amp;")}"' in page and 'data-target="queue-correction"' in page
