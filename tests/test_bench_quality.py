"""A fast real run of the answer-quality benchmark (bench/quality.py) on tiny data."""
import csv
import json

import pytest

from bench import quality

TOPICS = ["날씨", "점심", "영화", "운동", "커피", "공부", "여행", "음악", "주말", "친구"]
QUESTIONS = ["{t} 어때?", "{t} 좋아해?", "오늘 {t} 어땠어?", "{t} 얘기 해줘", "{t} 추천해줘", "{t} 때문에 힘들어",
             "{t} 생각나", "{t} 싫어", "{t} 하고 싶다", "{t} 어떻게 해?", "{t} 궁금해", "{t} 최고야"]
ANSWERS = ["{t} 좋아요.", "{t} 저도 좋아해요.", "{t} 괜찮았어요.", "{t} 이야기 좋죠.", "{t} 추천할게요.",
           "{t} 힘내세요.", "{t} 생각 많이 나죠.", "{t} 싫을 때도 있죠.", "{t} 해 보세요.", "{t} 천천히 해요.",
           "{t} 알려 드릴게요.", "{t} 최고예요!"]
ROW_NAMES = ["retrieval", "meaning", "seq2seq-whitespace", "seq2seq-morph", "seq2seq-morph+beam", "default",
             "seq2seq-whitespace+beam"]


def write_csv(path, pairs):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Q", "A", "label"])
        writer.writerows([q, a, 0] for q, a in pairs)
    return path


@pytest.fixture
def pairs():
    return [(q.format(t=t), a.format(t=t)) for q, a in zip(QUESTIONS, ANSWERS) for t in TOPICS]  # 120


def test_metric_definitions():
    assert quality.distinct_n(["a b c", "a b"], 1) == 3 / 5
    assert quality.distinct_n(["a b c", "a b"], 2) == 2 / 3  # "a b" twice, "b c" once; none across replies
    assert quality.distinct_n(["a", "b"], 2) == 0.0
    assert quality.top_reply_share(["x", "y", "x", "z"]) == 0.5


def test_paired_bootstrap():
    refs = ["오늘은 날씨가 좋아요.", "점심은 비빔밥이에요.", "주말에는 쉬어요.", "영화 보러 가요."]
    worse = ["비가 와요.", "배고파요.", "일해요.", "집에 있어요."]
    assert quality.chrf_win_share(refs, worse, refs, resamples=20) == 1.0
    assert quality.chrf_win_share(worse, refs, refs, resamples=20) == 0.0
    assert quality.chrf_win_share(refs, refs, refs, resamples=20) == 0.0  # a tie is not a win


def test_held_out_split_is_stable_and_disjoint(pairs):
    train, test = quality.split_test(pairs * 2, 20)
    assert (train, test) == quality.split_test(pairs * 2, 20)
    assert test and train and not {q for q, _ in test} & {q for q, _ in train}
    # independent of the trainer's own dev split, which is taken from `train`
    from chatbot.train import split_pairs
    assert split_pairs(train, 20)[1]


def test_quick_run_writes_all_rows(pairs, tmp_path):
    train_csv = write_csv(tmp_path / "train.csv", pairs[:100])
    test_csv = write_csv(tmp_path / "test.csv", pairs[100:])
    out = tmp_path / "quality.json"
    log = tmp_path / "experiments.md"
    assert quality.main(["--train", str(train_csv), "--test", str(test_csv), "--quick", "--quiet-train",
                         "--device", "cpu", "--threads", "1", "--out", str(out), "--log", str(log)]) == 0

    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["default"] == "default"
    assert [row["name"] for row in result["rows"]] == ROW_NAMES
    assert result["meta"]["train_pairs"] == 100 and result["meta"]["test_pairs"] == 20
    for row in result["rows"]:
        for key in ("bleu", "bleu_ko_mecab", "chrf"):
            assert 0 <= row[key] <= 100
        for key in ("distinct1", "distinct2", "top_reply_share"):
            assert 0 <= row[key] <= 1
        assert row["top_reply_share"] >= 1 / 20
        assert row["train_seconds"] >= 0 and row["device"] == "cpu"
        assert row["params"] == "e5-small" if row["name"] == "meaning" else row["params"] > 0
    rows = {row["name"]: row for row in result["rows"]}
    assert rows["retrieval"]["chrf"] > 5  # the nearest question (same topic) has a close answer
    assert rows["meaning"]["chrf"] > 5 and 0 <= rows["meaning"]["chrf_beats_retrieval_share"] <= 1
    assert rows["default"]["params"] == rows["seq2seq-morph"]["params"]  # same model, other decoding
    assert rows["seq2seq-whitespace"]["tokenizer"] == "whitespace" and rows["default"]["tokenizer"] == "mecab"
    assert len(log.read_text(encoding="utf-8").splitlines()) == 5  # one line per seq2seq row
    # The default picks among known answers where a training question is alike.
    assert 0 <= rows["default"]["known_answer_share"] <= 1
    assert 0 <= rows["default"]["chrf_beats_retrieval_share"] <= 1
    # Confidence: the calibrated threshold's coverage, the out-of-domain set's
    # fallback, and the curve against a bare TF-IDF cutoff (JSON and PNG).
    confidence = result["confidence"]
    assert 0 <= confidence["calibrated_threshold"] <= 1 and 0 <= confidence["coverage"] <= 1
    assert confidence["ood_questions"] >= 100 and 0 <= confidence["ood_fallback"] <= 1
    assert [p["coverage"] for p in confidence["curve"]] == [1.0, 0.9, 0.8, 0.7, 0.6]
    assert confidence["curve"][0]["confidence"]["coverage"] == 1.0
    assert confidence["curve"][0]["confidence"]["chrf_answered"] == rows["default"]["chrf"]
    assert (tmp_path / "quality-coverage.png").read_bytes()[:4] == b"\x89PNG"
