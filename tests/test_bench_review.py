"""bench/review.py's suggestion measure on a tiny real model."""
from bench import review
from chatbot.bot import Chatbot
from helpers import tiny_model


def test_the_suggestion_shares_count_the_reference_answer(tmp_path):
    bot = Chatbot.load(tiny_model(tmp_path / "models"))
    pairs = [("배가 너무 고파요", "맛있는 거 드세요."),  # helpers.TINY_PAIRS: 배고파
             ("오늘 날씨 좀 알려줘", "맑고 따뜻해요."),
             ("오늘 날씨 좀 알려줘", "천만에요.")]  # a wrong reference: at most among the 3, never first
    found = review.suggestion_hits(bot, pairs)
    assert found["questions"] == 3 and found["top1"] == round(2 / 3, 4)
    assert found["top3"] >= found["top1"] and found["top3"] in (round(2 / 3, 4), 1.0)
    assert review.suggestion_hits(bot, [("양자역학의 원리", "이 답은 어디에도 없어요.")])["top3"] == 0.0
