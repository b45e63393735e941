"""Confidence: every reply has one, below the threshold the bot says it does
not know (route "unsure"), and the trainer calibrates the threshold."""
import json
import re

import pytest

from chatbot import morph, train
from chatbot.bot import Chatbot, Reply
from chatbot.database import (FEEDBACK_DOWN, REVIEWED, ROUTE_KNOWN, ROUTE_MODEL, ROUTE_UNSURE, UNREVIEWED, Exchange,
                              review_queue_order)
from chatbot.extensions import db
from chatbot.queue_admin import unreviewed_groups
from helpers import TINY_MODEL, TINY_PAIRS, ask, connect, rows, tiny_model

UNSURE = ["모르겠어요 하나", "모르겠어요 둘"]


def stored(app, reply_id):
    with app.app_context():
        return db.session.get(Exchange, reply_id)


def test_every_model_reply_stores_its_confidence(app):
    tiny_model(app.config["MODEL_DIR"])
    sock = connect(app)
    for question in ("안녕하세요", "양자역학의 불확정성 원리"):
        name, reply = ask(sock, {"text": question})
        assert name == "reply"
        row = stored(app, reply["id"])
        assert row.route in (ROUTE_KNOWN, ROUTE_MODEL)
        assert 0 <= row.confidence <= 1
    first, second = [r.confidence for r in rows(app)]
    assert first > second  # a training question is surer than a question of unknown words


def test_words_the_bot_never_saw_lower_its_confidence(tmp_path):
    """Matching by words (meaning off): a question's confidence is cut by the
    share of its words no training question has.  (By meaning it is not:
    tests/test_meaning.py.)"""
    bot = Chatbot.load(tiny_model(tmp_path, meaning="off"))
    for question in ("안녕하세요 파이썬 자바스크립트", "배고파 환율 주가", "날씨 어때 양자역학"):
        tokens = morph.tokenize(question)
        share = bot.answers.known_share([tokens])[0]
        assert 0 < share < 1, question
        reply = bot.replies([question])[0]
        assert reply.confidence <= share, (question, reply)


def test_below_the_threshold_the_bot_says_it_does_not_know(make_app):
    app = make_app(MIN_CONFIDENCE=0.99, UNSURE_REPLIES=UNSURE)
    tiny_model(app.config["MODEL_DIR"])
    sock = connect(app)
    name, reply = ask(sock, {"text": "파이썬 리스트 정렬하는 법"})
    assert name == "reply"
    assert (reply["answer"] in UNSURE, reply["route"]) == (True, ROUTE_UNSURE)
    row = stored(app, reply["id"])
    assert row.route == ROUTE_UNSURE and row.answer == reply["answer"]
    assert 0 <= row.confidence < 0.99
    # an exact training question is as sure as can be: answered
    name, reply = ask(sock, {"text": "안녕하세요"})
    assert (reply["route"], reply["answer"]) == (ROUTE_KNOWN, "안녕하세요! 반가워요.")


def test_at_zero_every_question_is_answered(make_app):
    app = make_app(MIN_CONFIDENCE=0, UNSURE_REPLIES=UNSURE)
    tiny_model(app.config["MODEL_DIR"])
    sock = connect(app)
    for question in ("파이썬 리스트 정렬하는 법", "17 곱하기 23은?", "ㅋ", "안녕"):
        name, reply = ask(sock, {"text": question})
        assert name == "reply" and reply["route"] != ROUTE_UNSURE, question
        assert reply["answer"] not in UNSURE


def test_without_min_confidence_the_models_calibrated_threshold_decides(make_app):
    app = make_app(MIN_CONFIDENCE=None, UNSURE_REPLIES=UNSURE)
    version = tiny_model(app.config["MODEL_DIR"])
    calibration = json.loads((version / "calibration.json").read_text())
    calibration["threshold"] = 1.0
    (version / "calibration.json").write_text(json.dumps(calibration))
    sock = connect(app)
    assert ask(sock, {"text": "파이썬 리스트 정렬하는 법"})[1]["route"] == ROUTE_UNSURE
    calibration["threshold"] = 0.0
    (version / "calibration.json").write_text(json.dumps(calibration))
    app.extensions["chatbot.responder"]._target = None  # load the directory again
    assert ask(sock, {"text": "파이썬 리스트 정렬하는 법"})[1]["route"] != ROUTE_UNSURE


def test_a_bad_calibration_file_keeps_the_model_from_loading(tmp_path):
    version = tiny_model(tmp_path)
    (version / "calibration.json").write_text('{"threshold": 7}')
    with pytest.raises(Exception, match="calibration.json"):
        Chatbot.load(version)


def test_training_calibrates_a_threshold_on_its_dev_split(tmp_path):
    # Matching by words: these pairs differ only in a number, which a
    # sentence encoder hardly tells apart (질문 12번 is near every 질문 N번).
    pairs = TINY_PAIRS * 4 + [(f"질문 {i}번", f"답 {i}번") for i in range(40)]
    version = train.run_training(pairs, tmp_path, dev_percent=30, target_coverage=0.8, meaning="off", **TINY_MODEL)
    calibration = json.loads((version / "calibration.json").read_text())
    assert calibration["target_coverage"] == 0.8
    assert calibration["dev_questions"] > 5
    assert [p["coverage"] for p in calibration["curve"]] == list(train.COVERAGES)
    assert 0 <= calibration["threshold"] <= 1
    point = next(p for p in calibration["curve"] if p["answered"] >= 0.8 * calibration["dev_questions"])
    assert calibration["threshold"] <= point["threshold"] or point["coverage"] == 0.8
    assert Chatbot.load(version).threshold == calibration["threshold"]


def test_calibrate_answers_the_target_share_of_dev_questions():
    replies = [Reply(f"답 {i}", True, i / 10) for i in range(10)]  # confidences 0.0 .. 0.9
    references = [f"답 {i}" if i >= 5 else "전혀 다른 말" for i in range(10)]
    calibration = train.calibrate(replies, references, 0.7)
    assert calibration["threshold"] == 0.3  # 0.3 .. 0.9: 7 of 10 answered
    assert sum(r.confidence >= calibration["threshold"] for r in replies) == 7
    curve = {p["coverage"]: p for p in calibration["curve"]}
    assert [curve[c]["answered"] for c in (1.0, 0.9, 0.8, 0.7, 0.6)] == [10, 9, 8, 7, 6]
    assert curve[0.6]["chrf"] > curve[1.0]["chrf"]  # the sure ones are the right ones here
    assert train.calibrate([], [], 0.9)["threshold"] == 0.0


def test_calibrate_keeps_written_replies_only_when_as_sure_as_matched_ones():
    matched = [Reply(f"답 {i}", True, 0.4 + i / 20) for i in range(8)]   # 0.40 .. 0.75
    written = [Reply(f"글 {i}", False, 0.01 * (i + 1)) for i in range(4)]  # 0.01 .. 0.04
    calibration = train.calibrate(matched + written, [r.text for r in matched + written], 1.0)
    assert calibration["threshold"] == 0.4  # every matched question kept, no written one
    assert calibration["dev_answered"] == round(8 / 12, 4)
    only_written = train.calibrate(written, [r.text for r in written], 0.5)
    assert only_written["threshold"] == 0.03  # nothing matched (known_answers off): all replies count


def test_the_review_queue_puts_thumbs_down_first_then_unsure(app):
    with app.app_context():
        def add(question, route=ROUTE_MODEL, feedback=None, status=UNREVIEWED):
            db.session.add(Exchange(question=question, question_key=question, answer="a", route=route,
                                    feedback=feedback, status=status, confidence=0.5))
        add("unsure", route=ROUTE_UNSURE)  # the oldest, and a group of one
        add("plain"), add("plain"), add("plain")  # the biggest group, newer
        add("disliked", feedback=FEEDBACK_DOWN)
        add("reviewed unsure", route=ROUTE_UNSURE, status=REVIEWED)
        db.session.commit()
        ordered = db.session.scalars(db.select(Exchange).order_by(*review_queue_order())).all()
        assert [e.question for e in ordered][:3] == ["disliked", "unsure", "plain"]
        assert ordered[-1].question == "reviewed unsure"
        assert [group[0] for group in unreviewed_groups()] == ["disliked", "unsure", "plain"]


def test_the_review_list_shows_sorts_and_filters_by_confidence(app, logged_in):
    with app.app_context():
        for question, confidence in [("확실한 질문", 0.91), ("애매한 질문", 0.35), ("모르는 질문", 0.05)]:
            db.session.add(Exchange(question=question, question_key=question, answer="a", confidence=confidence))
        db.session.commit()
    page = logged_in.get("/admin/exchange/").get_data(as_text=True)
    assert "확신도" in page and "0.91" in page and "0.05" in page
    view = next(v for v in app.extensions["review_admin"]._views if v.endpoint == "exchange")
    sort = [name for name, _ in view._list_columns].index("confidence")
    ascending = logged_in.get(f"/admin/exchange/?sort={sort}").get_data(as_text=True)
    assert ascending.index("모르는 질문") < ascending.index("애매한 질문") < ascending.index("확실한 질문")
    below = next(i for i, f in enumerate(view._filters) if f.operation() == "미만")
    weak = logged_in.get(f"/admin/exchange/?flt0_{below}=0.5").get_data(as_text=True)
    assert "모르는 질문" in weak and "애매한 질문" in weak and "확실한 질문" not in weak
    at_least = next(i for i, f in enumerate(view._filters) if f.operation() == "이상")
    sure = logged_in.get(f"/admin/exchange/?flt0_{at_least}=0.35").get_data(as_text=True)
    assert "모르는 질문" not in sure and "애매한 질문" in sure and "확실한 질문" in sure


def test_the_home_page_counts_unsure_replies_and_links_to_them(app, logged_in):
    with app.app_context():
        for question, route, status in [("모름 1", ROUTE_UNSURE, UNREVIEWED), ("모름 2", ROUTE_UNSURE, UNREVIEWED),
                                        ("모름 검토됨", ROUTE_UNSURE, REVIEWED), ("아는 것", ROUTE_KNOWN, UNREVIEWED)]:
            db.session.add(Exchange(question=question, question_key=question, answer="a", route=route, status=status))
        db.session.commit()
    home = logged_in.get("/admin/").get_data(as_text=True)
    row = home[home.index("모른다고 답한 미검토"):]
    assert row[:row.index("</tr>")].count('<td class="text-right">2</td>') == 1
    link = re.search(r'href="([^"]*flt1_3=unsure[^"]*)"', home).group(1).replace("&amp;", "&")
    listed = logged_in.get(link).get_data(as_text=True)
    assert "모름 1" in listed and "모름 2" in listed
    assert "모름 검토됨" not in listed and "아는 것" not in listed
