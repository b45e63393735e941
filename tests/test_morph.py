"""Morphological analysis: tokens share stems, and replies rejoin exactly."""
import csv
from pathlib import Path

import pytest

from chatbot import morph

SENTENCES = [
    "안녕하세요! 만나서 반가워요.",
    "오늘 날씨가 정말 좋네요.",
    "춘천에는 비가 와요.",
    "춘천까지 기차로 얼마나 걸려요?",
    "점심은 김치찌개 어때요?",
    "커피 한 잔 하면서 쉬어 가요.",
    "주말에 영화 보러 갈래요?",
    "요즘 너무 피곤해서 일찍 자고 싶어요.",
    "힘들 때는 잠깐 쉬어도 괜찮아요.",
    "저는 대화를 배우는 작은 챗봇이에요.",
    "내일은 우산을 챙기세요.",
    "미세먼지가 심하니까 마스크 쓰세요.",
    "시험 공부는 잘 되고 있어요?",
    "산책하기 딱 좋은 날이에요.",
    "3박4일 여행 계획을 세워 볼까요?",
    "새해 복 많이 받으세요!",
    "그 노래 정말 좋죠.",
    "고양이가 창가에서 졸고 있어요.",
    "배고프면 간단하게 샌드위치 어때요?",
    "오늘 하루도 수고 많으셨어요.",
    "친구랑 싸워서 속상해요.",
    "괜찮아요, 누구나 실수할 수 있어요.",
    "책 읽는 걸 좋아하시나요?",
    "저녁에 라면 끓여 먹을까?",
    "비 오는 날엔 파전이 생각나요.",
    "운동은 일주일에 세 번 해요.",
    "2026년 11월 25일 수요일이에요.",
    "GPU 없이도 CPU로 잘 돌아가요.",
    "\"좋아요\"라고 말해 줘서 고마워요.",
    "잘 자요, 좋은 꿈 꾸세요~",
    "뭐 하고 놀까? 게임 한 판 할래?",
    "아침 7시 30분에 일어났어요.",
    "서울에서 부산까지 KTX로 가요.",
    "그럼 다음에 또 봐요 :)",
    "진짜 웃기다 ㅋㅋㅋ",
    "너무 슬퍼요 ㅠㅠ",
    "혹시 이름이 뭐예요?",
    "사진 찍는 취미가 생겼어요.",
    "청소하고 나니까 기분이 상쾌해요.",
    "마음이 불안할 땐 천천히 숨을 쉬어 보세요.",
]


@pytest.mark.parametrize("sentence", SENTENCES)
def test_round_trip(sentence):
    assert morph.detokenize(morph.tokenize(sentence)) == sentence


def test_round_trip_starter_answers():
    path = Path(__file__).resolve().parents[1] / "chatbot" / "data" / "starter_pairs.csv"
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 300
    for row in rows:
        for text in (row["Q"], row["A"]):
            assert morph.detokenize(morph.tokenize(text)) == morph.normalize(text)


def test_particles_share_the_stem():
    for text in ("춘천에", "춘천에는", "춘천까지"):
        tokens = morph.tokenize(text)
        assert tokens[0] == "춘천", tokens


def test_boundary_marks_spaces():
    assert morph.tokenize("비가 와요") == ["비", "가", morph.BOUNDARY, "와요"]


def test_whitespace_is_normalized():
    assert morph.detokenize(morph.tokenize("  비가   와요 \n")) == "비가 와요"
    assert morph.tokenize("") == []
    assert morph.tokenize("   ") == []


def test_question_key_ignores_spacing_punctuation_and_particles():
    key = morph.question_key("춘천에는 비가 와요?")
    assert key == morph.question_key("춘천 비 와요")
    assert key == morph.question_key("춘천에 비가  와요!!")
    assert key != morph.question_key("서울에는 비가 와요?")


def test_question_key_of_punctuation_only():
    assert morph.question_key("?!") == morph.question_key("?!")
    assert morph.question_key("ㅋㅋ") == morph.question_key("ㅋㅋ ")


def test_symbol_only_messages_keep_their_own_key_and_invisible_ones_have_none():
    keys = [morph.question_key(text) for text in ("?!", "😀", "...", "\u2800")]
    assert "" not in keys and len(set(keys)) == 4
    assert morph.question_key("?!") == morph.question_key("? !")
    for invisible in ("\u200b\u200b", "\u2060", "\ufeff", "\u3164", "\u115f\u1160", "\uffa0", "\u200b \u3164"):
        assert morph.visible(invisible).strip() == ""
        assert morph.question_key(invisible) == "", repr(invisible)
    assert morph.question_key("안녕\u200b") == morph.question_key("\u3164안녕") == morph.question_key("안녕")


def test_whitespace_backend():
    assert morph.tokenize("비가 와요", backend="whitespace") == ["비가", morph.BOUNDARY, "와요"]


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown MORPH_BACKEND"):
        morph.get_tagger("nope")


def test_mecab_works_when_konlpy_was_imported_first():
    """konlpy.tag imported before morph set up MeCab must not break the tagger."""
    import subprocess
    import sys

    code = ("import konlpy.tag\nfrom chatbot import morph\n"
            "assert morph.tokenize('춘천에는') == ['춘천', '에', '는']\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_release_lets_go_of_the_dictionary_and_it_comes_back():
    """The trainer releases MeCab once the pairs are tokenized; anything that
    tokenizes later loads it again."""
    before = morph.tokenize("춘천에는 비가 와요.")
    morph.release()
    assert morph.get_tagger.cache_info().currsize == 0
    assert morph.tokenize("춘천에는 비가 와요.") == before
    assert morph.get_tagger.cache_info().currsize == 1
