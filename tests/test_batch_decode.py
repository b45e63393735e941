"""Decoding several questions together gives exactly the single-question replies."""
import pytest

from chatbot.bot import Chatbot
from chatbot.decode import generate, generate_batch

from helpers import TINY_PAIRS, tiny_model

QUESTIONS = ["안녕하세요", "배고파", "", "날씨 어때?", "ㅋ" * 80, "너 누구야", "고마워", "비 와"]


@pytest.fixture(scope="module")
def bot(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    return Chatbot.load(tiny_model(models, max_steps=40, embed_dim=24, hidden_dim=32))


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_batch_equals_one_at_a_time(bot, decoding):
    bot.config.decoding = decoding
    from chatbot import morph

    sources = [bot.vocab.encode(morph.tokenize(q), add_eos=True) for q in QUESTIONS]
    one_by_one = [generate(bot.network, s, bot.config, bot._boundary_id) for s in sources]
    assert generate_batch(bot.network, sources, bot.config, bot._boundary_id) == one_by_one
    assert all(0 < len(r) <= bot.config.max_reply_len for r in one_by_one)


def test_reply_batch_matches_reply(bot):
    assert bot.reply_batch(QUESTIONS) == [bot.reply(q) for q in QUESTIONS]
    assert bot.reply_batch([]) == []


def test_training_pairs_are_answered_in_a_batch(bot):
    replies = bot.reply_batch([q for q, _ in TINY_PAIRS])
    assert len(replies) == len(TINY_PAIRS) and all(replies)
