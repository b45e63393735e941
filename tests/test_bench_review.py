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


def test_the_grouping_measure_counts_actions_and_purity_by_the_apps_own_groups(tmp_path):
    """배고파 / 배고파 죽겠어 (cosine 0.94) are one group at the default cut,
    너무 배고프다 (0.90) is not; one correction per group, so 2 actions by
    meaning against 3 by exact key for the one answer, plus one per
    out-of-domain question either way."""
    data = tmp_path / "pairs.csv"
    data.write_text("Q,A,label\n배고파,뭐 좀 드세요.,0\n배고파 죽겠어,뭐 좀 드세요.,0\n너무 배고프다,뭐 좀 드세요.,0\n"
                    "심심해,저랑 놀아요.,0\n", encoding="utf-8")
    ood = tmp_path / "ood.csv"
    ood.write_text("Q,category\n파이썬 가상환경 만드는 명령어 뭐예요,programming\n", encoding="utf-8")
    found = review.grouping_actions(data, ood)
    assert found["questions"] == 4 and found["answers"] == 2  # 심심해's answer is not shared by 3
    assert found["exact_key"] == {"groups": 4, "actions": 4, "purity": 1.0}
    assert found["meaning"] == {"groups": 3, "actions": 3, "purity": 1.0}
    assert found["actions_ratio"] == 0.75


def test_the_page_measure_loads_the_queue_home_and_a_group(tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("Q,A,label\n" + "".join(f"질문 {i},답 {i},0\n" for i in range(40)), encoding="utf-8")
    found = review.queue_page_times(data, rows=300, repeats=1)
    assert found["unreviewed"] == 300 and 0 < found["groups"] <= found["keys"] <= 40
    assert set(found["median_ms"]) == {"queue", "home", "group", "reach", "group_reach"}
    assert min(found["median_ms"].values()) > 0
