"""Every channel goes through one conversation path (chatbot/conversation.py),
and each exchange records the channel it came from."""
import re

import pytest

from chatbot import conversation
from chatbot.conversation import MessageError
from chatbot.database import CHANNEL_API, CHANNEL_KAKAO, CHANNEL_WEB, CHANNEL_WIDGET, ROUTE_FALLBACK
from helpers import add_exchange, ask, connect, get_row, skill_payload


def test_the_chat_page_records_its_channel(app):
    sock = connect(app)
    name, reply = ask(sock, {"text": "안녕"})
    assert name == "reply"
    assert get_row(app, reply["id"]).channel == CHANNEL_WEB


def test_the_widget_says_so_when_connecting_and_nothing_else_can(app):
    widget = connect(app, channel=CHANNEL_WIDGET)
    _, reply = ask(widget, {"text": "안녕"})
    assert get_row(app, reply["id"]).channel == CHANNEL_WIDGET
    # A browser cannot record itself as the API or KakaoTalk.
    spoof = connect(app, channel=CHANNEL_KAKAO)
    _, reply = ask(spoof, {"text": "안녕"})
    assert get_row(app, reply["id"]).channel == CHANNEL_WEB


def test_ask_stores_the_exchange_with_channel_and_key(app):
    from chatbot.database import ApiKey
    from chatbot.extensions import db

    with app.app_context():
        key = ApiKey(name="script", prefix="cb_test", key_hash="0" * 64)
        db.session.add(key)
        db.session.commit()
        reply = conversation.ask({"text": "  배고파 "}, "caller-1", CHANNEL_API, api_key_id=key.id)
        key_id = key.id
    assert reply["question"] == "배고파"
    assert reply["route"] == ROUTE_FALLBACK  # no model in this app yet
    row = get_row(app, reply["id"])
    assert (row.channel, row.api_key_id, row.session_id) == (CHANNEL_API, key_id, "caller-1")


@pytest.mark.parametrize("data, code", [
    ({"text": ""}, "empty"), ("   ", "empty"), ({"text": 5}, "bad_type"), (None, "bad_type"),
    ({"text": "a\x00b"}, "bad_encoding"), ({"text": "\ud800"}, "bad_encoding"), ("가" * 501, "too_long"),
])
def test_ask_refuses_bad_messages_with_the_same_codes_on_every_channel(app, data, code):
    with app.app_context():
        for channel in (CHANNEL_API, CHANNEL_KAKAO):
            with pytest.raises(MessageError) as caught:
                conversation.ask(data, "caller-1", channel)
            assert caught.value.code == code
    assert get_row(app, 1) is None  # nothing stored


INVISIBLE_ONLY = ["\u200b\u200b", "\u2060", "\ufeff", "\u3164\u3164", "\u115f\u1160", "\uffa0", " \u200b \u3164 "]


@pytest.mark.parametrize("text", INVISIBLE_ONLY)
def test_a_message_of_only_invisible_characters_is_empty_on_every_channel(app, text):
    import json

    from chatbot import api, kakao

    sock = connect(app)
    name, error = ask(sock, {"text": text})
    assert (name, error["code"]) == ("error", "empty")
    with app.app_context():
        _, secret = api.create_key("invisible", created_by="test")
        url = "/kakao/skill/" + kakao.skill_secret()
    client = app.test_client()
    response = client.post("/api/v1/messages", json={"text": text}, headers={"Authorization": f"Bearer {secret}"})
    assert (response.status_code, response.get_json()["code"]) == (400, "empty")
    response = client.post(url, data=json.dumps(skill_payload(text)), content_type="application/json")
    assert response.get_json()["template"]["outputs"][0]["simpleText"]["text"] == kakao.TEXTS["empty"]
    assert get_row(app, 1) is None  # nothing stored


def test_ask_refuses_an_unknown_channel(app):
    with app.app_context(), pytest.raises(ValueError):
        conversation.ask("안녕", "caller-1", "fax")


def test_feedback_reaches_only_the_owners_rows(app):
    mine = add_exchange(app, "내 질문", session_id="s-mine", channel=CHANNEL_KAKAO)
    theirs = add_exchange(app, "남의 질문", session_id="s-theirs", channel=CHANNEL_KAKAO)
    with app.app_context():
        assert conversation.give_feedback(mine, "down", CHANNEL_KAKAO, session_id="s-mine") == {"id": mine, "value": "down"}
        with pytest.raises(MessageError) as caught:
            conversation.give_feedback(theirs, "up", CHANNEL_KAKAO, session_id="s-mine")
        assert caught.value.code == "not_found"
        with pytest.raises(MessageError) as caught:
            conversation.give_feedback(mine, "up", CHANNEL_KAKAO, api_key_id=None)  # no owner value never matches
        assert caught.value.code == "not_found"
        with pytest.raises(MessageError) as caught:
            conversation.give_feedback(mine, "meh", CHANNEL_KAKAO, session_id="s-mine")
        assert caught.value.code == "bad_feedback"
    assert get_row(app, mine).feedback == "down"
    assert get_row(app, theirs).feedback is None


def test_feedback_reaches_only_the_channels_own_rows(app):
    """A session id is the client's word: the same id on another channel is not the same owner."""
    rows_by_channel = {channel: add_exchange(app, f"{channel} 질문", session_id="s-shared", channel=channel)
                       for channel in (CHANNEL_WEB, CHANNEL_WIDGET, CHANNEL_API, CHANNEL_KAKAO)}
    with app.app_context():
        for channel, row_id in rows_by_channel.items():
            for other in rows_by_channel:
                if other != channel:
                    with pytest.raises(MessageError) as caught:
                        conversation.give_feedback(rows_by_channel[other], "down", channel, session_id="s-shared")
                    assert caught.value.code == "not_found"
            assert conversation.give_feedback(row_id, "up", channel, session_id="s-shared")["value"] == "up"
        with pytest.raises(ValueError):
            conversation.give_feedback(rows_by_channel[CHANNEL_WEB], "up", "fax", session_id="s-shared")
    assert [get_row(app, row_id).feedback for row_id in rows_by_channel.values()] == ["up"] * 4


def test_the_home_page_counts_exchanges_by_channel_and_links_to_them(app, logged_in):
    for i in range(3):
        add_exchange(app, f"카톡 질문 {i}", channel=CHANNEL_KAKAO)
    add_exchange(app, "위젯 질문", channel=CHANNEL_WIDGET)
    add_exchange(app, "페이지 질문")
    home = logged_in.get("/admin/").get_data(as_text=True)
    row = home[home.index("<td>카카오톡</td>"):]
    assert row[:row.index("</tr>")].count('<td class="text-right">3</td>') == 1
    row = home[home.index("<td>REST API</td>"):]
    assert row[:row.index("</tr>")].count('<td class="text-right">0</td>') == 1
    link = re.search(r'href="([^"]*=kakao[^"]*)"', home).group(1).replace("&amp;", "&")
    listed = logged_in.get(link).get_data(as_text=True)
    assert [f"카톡 질문 {i}" in listed for i in range(3)] == [True, True, True]
    assert "위젯 질문" not in listed and "페이지 질문" not in listed
    assert "카카오톡" in listed  # the channel column


def test_another_channel_naming_a_browser_session_never_reaches_its_history_or_feedback(app):
    sock = connect(app)
    browser_session = sock.token.split(".")[0]  # an API caller may name any session, this one too
    planted = add_exchange(app, "심어 둔 질문", session_id=browser_session, channel=CHANNEL_API)
    _, own = ask(sock, {"text": "안녕"})
    sock.emit("history")
    history = sock.get_received()[0]["args"][0]["exchanges"]
    assert [row["id"] for row in history] == [own["id"]]
    sock.emit("feedback", {"id": planted, "value": "down"})
    received = sock.get_received()[0]
    assert (received["name"], received["args"][0]["code"]) == ("error", "not_found")
    assert get_row(app, planted).feedback is None


# -- the same answers on every channel ----------------------------------------------

UNSURE = ["모르는 질문이에요."]


def ask_on(app, channel, text):
    """(answer, route, stored row) for ``text`` asked on ``channel``; the
    route from the stored row, which every channel writes the same way."""
    import hashlib
    import json

    from chatbot import api, kakao
    from chatbot.extensions import db
    from helpers import rows, skill_payload

    client = app.test_client()
    if channel == CHANNEL_WEB:
        name, reply = ask(connect(app), {"text": text})
        assert name == "reply", reply
        answer = reply["answer"]
    elif channel == CHANNEL_API:
        with app.app_context():
            _, secret = api.create_key("channels", created_by="test")
        response = client.post("/api/v1/messages", json={"text": text},
                               headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200, response.get_json()
        answer = response.get_json()["answer"]
    else:
        with app.app_context():
            url = "/kakao/skill/" + kakao.skill_secret()
        user = "botUserKey-" + hashlib.sha256(text.encode()).hexdigest()[:8]
        response = client.post(url, data=json.dumps(skill_payload(text, user)), content_type="application/json")
        assert response.status_code == 200
        answer = response.get_json()["template"]["outputs"][0]["simpleText"]["text"]
    row = rows(app)[-1]
    with app.app_context():
        db.engine.dispose()
    assert (row.question, row.answer, row.channel) == (text, answer, channel)
    return answer, row.route


@pytest.mark.parametrize("channel", [CHANNEL_WEB, CHANNEL_API, CHANNEL_KAKAO])
def test_every_channel_gives_the_same_answers_corrections_and_fallback(make_app, channel):
    from chatbot.database import REVIEWED, ROUTE_KNOWN, ROUTE_MEMORY, ROUTE_UNSURE
    from helpers import tiny_model

    app = make_app(MIN_CONFIDENCE=0.99, UNSURE_REPLIES=UNSURE, CORRECTION_REFRESH_SECONDS=0)
    tiny_model(app.config["MODEL_DIR"])
    from chatbot import morph
    from chatbot.database import Exchange
    from chatbot.extensions import db

    with app.app_context():
        question = "우리 회사 이름이 뭐야"
        db.session.add(Exchange(question=question, question_key=morph.question_key(question), answer="틀린 답",
                                corrected_answer="한마디 주식회사예요.", status=REVIEWED))
        db.session.commit()
    assert ask_on(app, channel, "안녕하세요") == ("안녕하세요! 반가워요.", ROUTE_KNOWN)
    assert ask_on(app, channel, "우리 회사 이름이 뭐야?") == ("한마디 주식회사예요.", ROUTE_MEMORY)
    assert ask_on(app, channel, "파이썬 리스트 정렬하는 법") == (UNSURE[0], ROUTE_UNSURE)
