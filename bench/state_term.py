"""Does the network's encoder-state term still earn its place beside meaning? (issue 25, item 2)

    python -m bench.state_term --model-dir DIR   # a model trained with meaning on bench-quality's training split

On the model's own dev split (train.split_pairs with its dev_percent, the
questions it never trained on), the answer of the best-scoring training
question against the dev reference (chrF), for the score the bot uses with
meaning (word_weight x TF-IDF + the rest x meaning) and for that score mixed
with the cosine of the encoder states as the words-only bot does it:
(score + w x states) / (1 + w).  Nothing of bench-quality's test split is read.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import DEFAULT_DATA, read_pairs, split_test  # noqa: E402
from chatbot import meaning, morph, train  # noqa: E402
from chatbot.bot import Chatbot  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--test-percent", type=int, default=10)
    args = p.parse_args(argv)
    bot = Chatbot.load(Path(args.model_dir))
    assert bot.meanings is not None, "the model must have been trained with meaning"
    config = json.loads((Path(args.model_dir) / "metrics.json").read_text())["train_config"]
    pairs, _ = split_test(read_pairs(args.data), args.test_percent)
    _, dev = train.split_pairs(pairs, config["dev_percent"])
    dev_tok = train.tokenize_pairs(dev, bot.config.tokenizer)
    questions = [q for q, _, _, _ in dev_tok]
    references = [morph.normalize(a) for _, _, a, _ in dev_tok]
    vectors = meaning.encoder().embed_uncached([q for _, _, _, q in dev_tok])
    # The model's answers are the training pairs', then the dev pairs' (train.py): only the first are candidates.
    trained = len(bot.answers.answers) - len(dev_tok)
    assert bot.answers.question_tokens()[trained:] == questions, "not this model's dev split"
    words = bot.answers.similarities(questions)[:, :trained]
    by_meaning = meaning.similarity(vectors, bot.meanings[:trained])
    score = bot.config.word_weight * words + (1 - bot.config.word_weight) * by_meaning
    sources = [bot.vocab.encode(q, add_eos=True) for q in questions]
    states = bot._question_states(sources) @ bot._answer_states[:trained].T
    print(f"{len(dev_tok)} dev questions, {trained} training questions, word weight {bot.config.word_weight}")
    for weight in (0.0, 0.1, 0.25, 0.5, 1.0):
        mixed = (score + weight * states) / (1 + weight)
        replies = [bot.answers.answers[i] for i in mixed.argmax(axis=1)]
        print(f"state weight {weight:4.2f}: chrF {train._chrf(replies, references)}", flush=True)


if __name__ == "__main__":
    main()
