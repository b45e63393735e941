"""bench/learning.py, scaled down: the harness runs end to end on a tiny model."""
import csv
import json

from bench import learning

STARTER = [("안녕하세요", "안녕하세요! 반가워요."), ("배고파", "맛있는 거 드세요."), ("날씨 어때", "맑고 따뜻해요."),
           ("심심해", "산책 어때요?"), ("피곤해", "푹 쉬세요."), ("고마워", "천만에요.")] * 3
CLUSTERS = {
    "춘천에 가면 닭갈비를 드세요.": ["춘천 가면 뭐 먹어", "춘천 가서 뭐 먹지", "춘천 여행 가면 뭐 먹을까"],
    "우산을 챙기세요.": ["비 올까", "오늘 비 와", "비 온대"],
    "산에 가 보세요.": ["주말에 등산 갈까", "등산 가고 싶다", "주말 등산 어때"],
    "일찍 주무세요.": ["잠이 안 와", "잠이 안 온다", "밤에 잠이 안 와"],
}


def write(path, rows, header):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_clusters_need_three_wordings_that_differ_after_the_question_key():
    pairs = [("비 올까?", "우산"), ("비 올까", "우산"), ("비 와", "우산"), ("배고파", "밥"), ("배고파!", "밥"),
             ("밥 줘", "밥"), ("밥 먹자", "밥")]
    assert learning.clusters(pairs) == [("밥", ["배고파", "밥 줘", "밥 먹자"])]


def test_quick_run_reports_every_figure(tmp_path):
    data = write(tmp_path / "data.csv", [(q, a) for a, qs in CLUSTERS.items() for q in qs], ["Q", "A"])
    starter = write(tmp_path / "starter.csv", STARTER, ["Q", "A"])
    ood = write(tmp_path / "ood.csv", [("파이썬 리스트 정렬", "programming"), ("17 곱하기 23", "arithmetic")],
                ["Q", "category"])
    out = tmp_path / "learning.json"
    halves = {learning.half_of(answer) for answer in CLUSTERS}
    assert halves == {"tune", "report"}  # both halves have clusters here
    args = ["--data", str(data), "--starter", str(starter), "--ood", str(ood), "--quick", "--out", str(out),
            "--half", "report"]
    assert learning.main(args) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    reported = [a for a in CLUSTERS if learning.half_of(a) == "report"]
    assert result["clusters"] == len(reported) and result["paraphrases"] == 2 * len(reported)
    assert result["retrain"]["state"] == "activated"
    for key in ("at_once", "after_retrain", "starter_kept_fresh", "starter_kept_after_corrections",
                "starter_kept_after_retrain", "ood_fallback_fresh", "ood_fallback_after_retrain"):
        assert 0 <= result[key] <= 1, key
    assert result["ood_questions"] == 2 and result["starter_questions"] > 0
