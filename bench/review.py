"""Review benchmark (issue 26): how much of a reviewer's work the queue's
groups by meaning save, how pure they are, how fast the queue is, and how
often the suggested answers hold the right one.

    make bench-review                          # groups and the queue's pages
    python -m bench.review --model-dir DIR     # ... and the suggestions, with a model trained on
                                               # bench-quality's training split (--keep-models)

Groups: every question of ChatbotData's paraphrase clusters (an answer
shared by 3 or more questions) and every out-of-domain question
(bench/data/out_of_domain_test.csv, each its own answer) asked once as an
unsure exchange, grouped by the app's own code (chatbot/grouping.py, then
queue_admin.unreviewed_groups) on a real SQLite file.  Actions to give every
question its reference answer: one correction per group, plus two (split
off, then correct) per question whose answer is not its group's most common;
by exact key (the queue without meaning) and by meaning.  Purity: the share
of questions whose answer is their group's most common.

Queue pages: --queue-rows unreviewed exchanges (ChatbotData's questions, the
frequent ones asked often; 👎 and unsure among them) in a SQLite file, their
keys in groups of one to a few as question_group holds them (made up, with
random unit vectors: the pages' work does not depend on what they mean), and
the median time of the queue, the home page, the biggest group's page and
the previews of what a correction would change (chatbot/reach.py: of the
newest exchange's question, and of that group's) through Flask's test client,
logged in, with no model (the preview then scores by words).

Suggestions: for each question of bench-quality's test split (the same
stable hash) whose reference answer is also a training pair's answer, that
is, the question has a paraphrase in the training data (ChatbotData's
clusters share one answer): is the reference the first suggestion, and
among the first three (chatbot/suggest.py, nothing reviewed yet)?

Writes JSON and prints a summary.
"""
import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import DEFAULT_DATA, DEFAULT_OOD, read_pairs, read_questions, split_test  # noqa: E402
from chatbot import corrections, morph, suggest  # noqa: E402
from chatbot.bot import Chatbot  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "review.json"


def suggestion_hits(bot, pairs) -> dict:
    """Top-1 and top-3 shares of the reference answer among the suggestions."""
    if not pairs:
        raise SystemExit("no test question has a paraphrase in the training data")
    nothing_reviewed = corrections._Built([])
    top1 = top3 = 0
    started = time.perf_counter()
    for question, reference in pairs:
        found = [s.answer for s in suggest.nearest_answers(bot, nothing_reviewed, question,
                                                           morph.question_key(question))]
        top1 += bool(found) and found[0] == reference
        top3 += reference in found
    seconds = time.perf_counter() - started
    return {"questions": len(pairs), "top1": round(top1 / len(pairs), 4), "top3": round(top3 / len(pairs), 4),
            "ms_per_question": round(1000 * seconds / len(pairs), 1)}


def make_app(folder: Path, **config):
    import flask_migrate

    from chatbot import create_app

    app = create_app({"SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'chatbot.db'}",
                      "MODEL_DIR": str(folder / "models"), "WTF_CSRF_ENABLED": False, "HTTP_LIMIT": "",
                      **config})
    with app.app_context():
        flask_migrate.upgrade()
    return app


def score(groups, answer_of) -> dict:
    """Actions and purity of ``groups`` ({group: [question]})."""
    pure = sum(Counter(answer_of[q] for q in questions).most_common(1)[0][1] for questions in groups.values())
    asked = sum(len(questions) for questions in groups.values())
    return {"groups": len(groups), "actions": len(groups) + 2 * (asked - pure), "purity": round(pure / asked, 4)}


def grouping_actions(data, ood) -> dict:
    """Reviewer actions and purity, by exact key and by meaning (the module docstring)."""
    from chatbot.database import ROUTE_UNSURE, Exchange
    from chatbot.extensions import db
    from chatbot.queue_admin import unreviewed_groups

    pairs = read_pairs(data)
    shared = Counter(a for _, a in pairs)
    asked = {q: a for q, a in pairs if shared[a] >= 3}
    asked |= {q: f"(out of domain) {q}" for q, _ in read_questions(ood) if q not in asked}
    with tempfile.TemporaryDirectory() as folder:
        app = make_app(Path(folder), QUEUE_MEANING_GROUPS=True)
        with app.app_context():
            db.session.add_all([Exchange(question=q, question_key=morph.question_key(q), answer="잘 모르겠어요.",
                                         route=ROUTE_UNSURE) for q in asked])
            db.session.commit()
            started = time.perf_counter()
            app.extensions["chatbot.grouper"].catch_up()
            seconds = time.perf_counter() - started
            by_key, by_meaning = {}, {}
            questions_of = {}
            for q in asked:
                questions_of.setdefault(morph.question_key(q), []).append(q)
            for group in unreviewed_groups(limit=len(asked)):
                for key, _ in group.keys:
                    by_key[key] = questions_of[key]
                    by_meaning.setdefault(group.key, []).extend(questions_of[key])
            db.engine.dispose()
    exact, meaning = score(by_key, asked), score(by_meaning, asked)
    return {"questions": len(asked), "answers": len(set(asked.values())), "exact_key": exact, "meaning": meaning,
            "actions_ratio": round(meaning["actions"] / exact["actions"], 3),
            "grouping_seconds": round(seconds, 1), "similarity": app.config["QUEUE_GROUP_SIMILARITY"]}


def queue_page_times(data, rows: int, repeats: int = 5, seed: int = 26) -> dict:
    """Median times of the queue, the home page and the biggest group's page
    at ``rows`` unreviewed exchanges (the module docstring)."""
    import numpy as np
    import sqlalchemy as sa

    from chatbot.database import FEEDBACK_DOWN, ROUTE_UNSURE, Exchange, QuestionGroup, Reviewer
    from chatbot.extensions import db
    from chatbot.queue_admin import unreviewed_groups

    rng = random.Random(seed)
    questions = sorted({q for q, _ in read_pairs(data)})
    keys = {q: morph.question_key(q) for q in questions}
    weights = [1 / (rank + 1) for rank in range(len(questions))]  # a few asked often, most rarely
    start = datetime(2026, 11, 1)
    with tempfile.TemporaryDirectory() as folder:
        app = make_app(Path(folder), QUEUE_MEANING_GROUPS=False)
        with app.app_context():
            table = Exchange.__table__
            picked = rng.choices(questions, weights, k=rows)
            db.session.execute(table.insert(), [
                {"question": q, "question_key": keys[q], "answer": "잘 모르겠어요.", "status": "unreviewed",
                 "route": ROUTE_UNSURE if rng.random() < 0.2 else "model", "channel": "web",
                 "feedback": FEEDBACK_DOWN if rng.random() < 0.05 else None,
                 "created_at": start + timedelta(seconds=20 * i)} for i, q in enumerate(picked)])
            distinct = sorted({keys[q] for q in picked if keys[q]})
            rng.shuffle(distinct)
            groups, leaders = [], []
            unit = np.random.default_rng(seed).standard_normal((len(distinct), 384))
            unit /= np.linalg.norm(unit, axis=1, keepdims=True)
            for key, vector in zip(distinct, unit):
                leader = rng.choice(leaders[-50:]) if leaders and rng.random() < 0.5 else key
                if leader == key:
                    leaders.append(key)
                groups.append({"question_key": key, "group_key": leader, "encoder": "e5-small",
                               "vector": vector.astype("<f2").tobytes(), "created_at": start})
            db.session.execute(QuestionGroup.__table__.insert(), groups)
            reviewer = Reviewer(username="bench")
            reviewer.set_password("bench password 26")
            db.session.add(reviewer)
            db.session.commit()
            biggest = unreviewed_groups(limit=1)[0].key
            newest = db.session.scalar(sa.select(sa.func.max(Exchange.id)))
            db.session.remove()
        client = app.test_client()
        client.post("/login", data={"username": "bench", "password": "bench password 26"})
        pages = {"queue": "/admin/queue/", "home": "/admin/", "group": f"/admin/queue/group?key={biggest}",
                 "reach": f"/admin/exchange/reach/?id={newest}", "group_reach": f"/admin/exchange/reach/?id={newest}"
                 f"&group={biggest}"}
        times = {}
        for name, path in pages.items():
            samples = []
            for _ in range(repeats + 1):  # the first load warms up (templates)
                started = time.perf_counter()
                response = client.get(path)
                samples.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (path, response.status_code)
            times[name] = round(statistics.median(samples[1:]), 1)
        with app.app_context():
            unreviewed = db.session.scalar(sa.select(sa.func.count()).select_from(Exchange))
            db.engine.dispose()
    return {"unreviewed": unreviewed, "keys": len(distinct), "groups": len(leaders), "median_ms": times,
            "repeats": repeats}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", help="a model trained on bench-quality's training split: measure the suggestions")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--ood", default=str(DEFAULT_OOD))
    p.add_argument("--test-percent", type=int, default=10)
    p.add_argument("--queue-rows", type=int, default=100_000, help="unreviewed exchanges for the page times")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    result = {"grouping": grouping_actions(args.data, args.ood)}
    g = result["grouping"]
    print(f"groups: {g['questions']} questions ({g['answers']} answers): actions by exact key "
          f"{g['exact_key']['actions']} (purity {g['exact_key']['purity']:.1%}), by meaning "
          f"{g['meaning']['actions']} (purity {g['meaning']['purity']:.1%}): {g['actions_ratio']}x; "
          f"grouped in {g['grouping_seconds']} s", flush=True)
    result["queue_pages"] = queue_page_times(args.data, args.queue_rows)
    q = result["queue_pages"]
    print(f"pages at {q['unreviewed']:,} unreviewed exchanges ({q['keys']:,} keys in {q['groups']:,} groups), "
          "median ms: " + ", ".join(f"{name} {ms}" for name, ms in q["median_ms"].items()), flush=True)
    if args.model_dir:
        bot = Chatbot.load(Path(args.model_dir))
        train_pairs, test_pairs = split_test(read_pairs(args.data), args.test_percent)
        assert bot.answers is not None and len(bot.answers) == len(train_pairs), "not a model of this training split"
        training_answers = {a for _, a in train_pairs}
        paraphrased = [(q, a) for q, a in test_pairs if a in training_answers]
        result["suggestions"] = suggestion_hits(bot, paraphrased)
        result["by_meaning"] = bot.meanings is not None
        result["test_questions"] = len(test_pairs)
        s = result["suggestions"]
        print(f"suggestions: the reference answer first for {s['top1']:.1%}, in the first 3 for {s['top3']:.1%} "
              f"of {s['questions']} test questions with a paraphrase in the training data "
              f"({s['ms_per_question']} ms a question)")
    result["meta"] = {"model": bot.version if args.model_dir else None, "data": args.data,
                      "test_percent": args.test_percent,
                      "command": "python -m bench.review " + " ".join(argv if argv is not None else sys.argv[1:]),
                      "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
