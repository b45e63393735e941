"""A simulated month of chats, so /admin/analytics has something to show.

    make simulate                                   # the app's database (DATABASE_URL, else instance/chatbot.db), if it has no real chats
    python -m bench.simulate --db /tmp/demo.db      # a SQLite file of its own (made and migrated)
    python -m bench.simulate --days 60 --per-day 800 --seed 7

Adds ``--days`` days (up to today, UTC) of exchanges, ``--per-day`` a day
on average (more on weekdays, more in the daytime in Korea), asked on the
four channels with the starter pairs' questions and a few the bot does not
know.  Three model versions answer in turn, each retrain a little better
than the last (fewer "잘 모르겠어요" and 👎), as a month of reviews and
retrains would make them; after the newest ones, the model directory's own
versions are used when it has them, so their dev metrics show beside the
rates.  About 1 in 8 askers rate the reply, and reviewers have gone
through most of the older questions, correcting the answers that got a 👎.

Rows are added with one executemany per day (SQLAlchemy Core), never deleted.
It refuses a database that holds anything it did not make (real chats,
imported pairs): its reviewed rows would go into the next retrain and its
questions into the review queue.
"""
import argparse
import csv
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
UNKNOWN = ["주식 사도 될까", "자동차 고장났어", "면접 떨어졌어", "컴퓨터가 느려", "양자역학 알려줘", "환율 전망은?",
           "전세 계약 끝나면 어떡해", "보일러 고장났어", "세금 신고 언제야", "고양이가 밥을 안 먹어"]
CHANNEL_WEIGHTS = {"web": 55, "widget": 20, "api": 10, "kakao": 15}
UNSURE_REPLY = "잘 모르겠어요. 다르게 말해 줄래요?"


def starter_pairs():
    with open(ROOT / "chatbot" / "data" / "starter_pairs.csv", encoding="utf-8-sig", newline="") as f:
        return [(row[0], row[1]) for row in csv.reader(f) if row and row[0] != "Q"]


def version_names(models_root, count=3):
    """The newest ``count`` versions in the model directory, padded with made-up older names."""
    from chatbot import versions

    names = versions.list_versions(models_root)[-count:]
    made_up = [f"20260{k}01-090000" for k in range(1, 10)]
    while len(names) < count:
        names.insert(0, made_up[count - len(names) - 1])
    return names


def simulate(app, days=30, per_day=400, seed=1):
    """Add the simulated exchanges to ``app``'s database; returns how many."""
    from chatbot import morph
    from chatbot.database import Exchange
    from chatbot.extensions import db

    rng = random.Random(seed)
    pairs = starter_pairs()[:150]
    keys = {q: morph.question_key(q) for q in [q for q, _ in pairs] + UNKNOWN}
    names = version_names(Path(app.config["MODEL_DIR"]))
    # per version: (share written by the model, share "잘 모르겠어요", 👎 among rated)
    quality = [(0.30, 0.18, 0.45), (0.22, 0.12, 0.35), (0.15, 0.07, 0.25)]
    today = datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days - 1)
    total = 0
    with app.app_context():
        for d in range(days):
            day = first + timedelta(days=d)
            version = min(len(names) - 1, d * len(names) // days)
            written, unsure, disliked = quality[min(version, len(quality) - 1)]
            count = int(per_day * (1.2 if day.weekday() < 5 else 0.6) * rng.uniform(0.8, 1.2))
            rows = []
            for _ in range(count):
                # Korea is UTC+9: most chats between 09:00 and 23:00 there.
                at = day + timedelta(hours=(rng.triangular(0, 14, 6) + 0) % 24, seconds=rng.randrange(3600))
                known = rng.random() > 0.12
                question, answer = rng.choice(pairs) if known else (rng.choice(UNKNOWN), "")
                roll = rng.random()
                if not known or roll < unsure:
                    route, answer, confidence = "unsure", UNSURE_REPLY, rng.uniform(0.05, 0.3)
                elif roll < unsure + 0.15:
                    route, confidence = "memory", None
                elif roll < unsure + 0.15 + written:
                    route, confidence = "model", rng.uniform(0.3, 0.8)
                    answer = answer.split(" ")[0] + " 그렇군요."
                else:
                    route, confidence = "known", rng.uniform(0.5, 1.0)
                feedback = None
                if rng.random() < 0.12:
                    bad = route in ("unsure", "model")
                    feedback = "down" if rng.random() < disliked * (1.6 if bad else 0.6) else "up"
                age = (today - day).days
                status, corrected, reviewer, reviewed_at = "unreviewed", None, None, None
                if rng.random() < (0.75 if age > 7 else 0.25):
                    status, reviewer, reviewed_at = "reviewed", "simulator", at + timedelta(days=1)
                    if feedback == "down" or route == "unsure" or (route == "model" and rng.random() < 0.5):
                        corrected = dict(pairs).get(question) or "그건 담당자에게 물어봐 주세요."
                    if rng.random() < 0.03:
                        status, corrected = "needs_deletion", None
                rows.append({"question": question, "question_key": keys[question], "answer": answer,
                             "created_at": at, "session_id": f"sim-{rng.randrange(5000)}",
                             "model_version": names[version], "route": route, "confidence": confidence,
                             "status": status, "corrected_answer": corrected, "reviewer": reviewer,
                             "reviewed_at": reviewed_at, "feedback": feedback,
                             "channel": rng.choices(list(CHANNEL_WEIGHTS), list(CHANNEL_WEIGHTS.values()))[0]})
            db.session.execute(sa.insert(Exchange), rows)
            total += len(rows)
        db.session.commit()
    return total


def unsimulated_exchanges(app) -> int:
    """How many of the database's exchanges this simulator did not make
    (its rows have session ids "sim-N")."""
    from chatbot.database import Exchange
    from chatbot.extensions import db

    with app.app_context():
        mine = Exchange.session_id.startswith("sim-", autoescape=True)
        return db.session.scalar(sa.select(sa.func.count()).select_from(Exchange)
                                 .where(sa.or_(Exchange.session_id.is_(None), ~mine)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="a SQLite file (made and migrated); default: the app's DATABASE_URL")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import flask_migrate

    from chatbot import create_app

    config = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{args.db.resolve()}"} if args.db else {}
    app = create_app(config)
    where = sa.engine.make_url(app.config["SQLALCHEMY_DATABASE_URI"]).render_as_string(hide_password=True)
    with app.app_context():
        flask_migrate.upgrade()
    others = unsimulated_exchanges(app)
    if others:
        parser.exit(2, f"refusing: {where} holds {others:,} exchanges that are not simulated (chats or imported "
                       "pairs); the simulated reviews would go into its next retrain. "
                       "Give it a database of its own: --db /tmp/demo.db\n")
    added = simulate(app, days=args.days, per_day=args.per_day, seed=args.seed)
    print(f"added {added:,} simulated exchanges over {args.days} days to {where}")
    print("see them at /admin/analytics (flask --app app create-admin NAME for a login)")


if __name__ == "__main__":
    main()
