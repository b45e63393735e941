"""Statistics page benchmark: /admin/analytics on 1,000,000 exchanges in SQLite.

    make bench-analytics                  # or: python -m bench.analytics --help

Fills a scratch SQLite database (migrated like the app's, so with the
migrations' indexes) with ``--rows`` exchanges spread over ``--days`` days
up to today, in one ``INSERT ... SELECT`` from a recursive CTE (no ORM
objects, no Python loop), then times, median of ``--runs`` runs each:

- each of the two statements the page makes (chatbot/analytics.py: overview,
  the counts per day or week, model version and channel; top_groups), and
- the whole page, rendered through Flask's test client by a logged-in reviewer,
  and the admin home page (its counts come from the same table),

for three ranges: the page's default (the last 30 days, per day) and the
longest it allows (the last 366 days, per week and per day: with the default
--days, every row).  Writes bench/results/analytics.json and prints a summary.

The rows are made from the row number with a multiplicative hash, so a run
always builds the same data: routes, feedback, review states, corrections,
channels and five model versions in about the shares a live bot sees.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "analytics.json"
VERSIONS = ("20260101-090000", "20260201-090000", "20260301-090000", "20260401-090000", "20260501-090000")

# h: a pseudo-random number 0..999 from the row number n; h2, h3: two more.
FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows),
r AS (SELECT i, (i * 2654435761) % 1000 AS h, (i * 40503 + 7) % 997 AS h2, (i * 69069 + 3) % 991 AS h3 FROM n)
INSERT INTO exchange (question, question_key, answer, created_at, session_id, model_version, route, confidence,
                      status, corrected_answer, reviewer, reviewed_at, feedback, channel)
SELECT '질문 ' || (h3 * 7 % 5000) || ' 이에요?',
       '질문 ' || (h3 * 7 % 5000),
       '답변 ' || (h2 % 300),
       strftime('%Y-%m-%d %H:%M:%f', :start, '+' || ((i - 1) * :seconds_per_row) || ' seconds'),
       'session-' || (i % 20000),
       CASE WHEN route = 'fallback' THEN NULL ELSE :v0 END,
       route,
       CASE WHEN route IN ('model', 'known', 'unsure') THEN h2 / 997.0 END,
       status,
       CASE WHEN status = 'reviewed' AND h3 < 300 THEN '고친 답변 ' || (h2 % 50)
            WHEN status = 'reviewed' AND h3 < 400 THEN '답변 ' || (h2 % 300) END,
       CASE WHEN status != 'unreviewed' THEN 'kim' END,
       CASE WHEN status != 'unreviewed' THEN :start END,
       CASE WHEN h2 < 100 THEN 'up' WHEN h2 < 150 THEN 'down' END,
       CASE WHEN h3 < 600 THEN 'web' WHEN h3 < 750 THEN 'widget' WHEN h3 < 900 THEN 'api' ELSE 'kakao' END
FROM (SELECT i, h, h2, h3,
             CASE WHEN h < 150 THEN 'model' WHEN h < 700 THEN 'known' WHEN h < 850 THEN 'memory'
                  WHEN h < 970 THEN 'unsure' WHEN h < 980 THEN 'fallback' ELSE 'import' END AS route,
             CASE WHEN (h2 + h3) % 10 < 2 THEN 'reviewed' WHEN (h2 + h3) % 100 = 50 THEN 'needs_deletion'
                  ELSE 'unreviewed' END AS status
      FROM r)
"""


def fill(app, rows, days):
    """``rows`` exchanges over the ``days`` days up to now, in created_at order
    (as a live bot appends them); then the model versions by time, one fifth each."""
    import sqlalchemy as sa

    from chatbot.extensions import db

    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    start = now - timedelta(days=days)
    seconds = days * 86400 / rows
    with app.app_context():
        began = time.perf_counter()
        db.session.execute(sa.text(FILL), {"rows": rows, "start": start.strftime("%Y-%m-%d %H:%M:%S"),
                                           "seconds_per_row": f"{seconds:.6f}", "v0": VERSIONS[0]})
        step = timedelta(days=days / len(VERSIONS))
        for k, version in enumerate(VERSIONS[1:], start=1):
            db.session.execute(sa.text("UPDATE exchange SET model_version = :v WHERE created_at >= :t "
                                       "AND model_version IS NOT NULL"),
                               {"v": version, "t": (start + step * k).strftime("%Y-%m-%d %H:%M:%S")})
        db.session.commit()
        db.session.execute(sa.text("ANALYZE"))
        db.session.commit()
        filled = time.perf_counter() - began
        count = db.session.scalar(sa.text("SELECT count(*) FROM exchange"))
    return count, filled


def median_ms(call, runs):
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 1)


def measure(app, client, args, runs, models):
    """Each query's and the page's median time (ms) for one range."""
    from werkzeug.datastructures import MultiDict

    from chatbot import analytics
    from chatbot.database import utcnow

    with app.app_context():
        span, errors = analytics.parse_span(MultiDict(args), utcnow().date())
        assert not errors, errors
        queries = {  # overview: the one statement behind by_period, by_version and by_channel
            "overview": lambda: analytics.overview(span),
            "top_groups": lambda: analytics.top_groups(span),
        }
        result = {name: median_ms(call, runs) for name, call in queries.items()}
        exchanges = analytics.total(analytics.by_period(span)).exchanges
    url = "/admin/analytics/?" + "&".join(f"{k}={v}" for k, v in args.items())
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    page = median_ms(lambda: client.get(url), runs)
    return {"range": f"{span.start}..{span.end}", "period": span.period, "exchanges_in_range": exchanges,
            "queries_ms": result, "page_ms": page, "page_bytes": len(response.data)}


def fill_groups(app, seed=26):
    """Every question key in a group by meaning, as the review queue's
    grouping leaves them (chatbot/grouping.py): about half join an earlier
    key's group.  Made up (the page's work does not depend on which)."""
    import random

    import sqlalchemy as sa

    from chatbot.database import Exchange, QuestionGroup
    from chatbot.extensions import db

    rng = random.Random(seed)
    with app.app_context():
        keys = db.session.scalars(sa.select(Exchange.question_key).distinct()).all()
        rows, leaders = [], []
        for key in keys:
            leader = rng.choice(leaders[-50:]) if leaders and rng.random() < 0.5 else key
            if leader == key:
                leaders.append(key)
            rows.append({"question_key": key, "group_key": leader, "encoder": "e5-small", "vector": bytes(768),
                         "created_at": datetime(2026, 1, 1)})
        db.session.execute(QuestionGroup.__table__.insert(), rows)
        db.session.commit()
    return len(keys), len(leaders)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--db", type=Path, help="keep the database at this path (default: a temp dir)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import flask_migrate

    from chatbot import create_app
    from chatbot.database import Reviewer
    from chatbot.extensions import db

    workdir = Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    path = args.db or workdir / "chatbot.db"
    if path.exists():
        path.unlink()
    app = create_app({"SECRET_KEY": os.urandom(16).hex(), "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}",
                      "MODEL_DIR": str(workdir / "models"), "WTF_CSRF_ENABLED": False, "HTTP_LIMIT": ""})
    with app.app_context():
        flask_migrate.upgrade()
        reviewer = Reviewer(username="bench")
        reviewer.set_password("bench-password")
        db.session.add(reviewer)
        db.session.commit()
    count, filled = fill(app, args.rows, args.days)
    print(f"filled {count:,} exchanges over {args.days} days in {filled:.1f} s "
          f"({path.stat().st_size / 2**20:.0f} MB)", flush=True)
    keys, groups = fill_groups(app)
    print(f"grouped their {keys:,} question keys in {groups:,} groups (question_group)", flush=True)

    client = app.test_client()
    assert client.post("/login", data={"username": "bench", "password": "bench-password"}).status_code == 302
    today = datetime.now(timezone.utc).date()
    ranges = {
        "default_30_days_daily": {},
        "366_days_weekly": {"from": (today - timedelta(days=365)).isoformat(), "to": today.isoformat(),
                            "period": "week"},
        "366_days_daily": {"from": (today - timedelta(days=365)).isoformat(), "to": today.isoformat(),
                           "period": "day"},
    }
    results = {name: measure(app, client, query, args.runs, workdir / "models") for name, query in ranges.items()}
    assert client.get("/admin/").status_code == 200
    home = {"page_ms": median_ms(lambda: client.get("/admin/"), args.runs)}
    with app.app_context():
        from chatbot import review
        home["home_counts_ms"] = median_ms(review.home_counts, args.runs)
    with app.app_context():
        import sqlalchemy as sa
        sqlite_version = db.session.scalar(sa.text("SELECT sqlite_version()"))
        db.engine.dispose()
    report = {"rows": count, "days": args.days, "runs": args.runs, "fill_seconds": round(filled, 1),
              "sqlite": sqlite_version, "cpus": os.cpu_count(),
              "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "ranges": results, "home": home}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    print(f"\n{count:,} exchanges, SQLite {sqlite_version}, median of {args.runs} runs (ms):")
    names = list(next(iter(results.values()))["queries_ms"])
    print(f"{'range':<24}{'rows in range':>14}" + "".join(f"{n:>12}" for n in names) + f"{'page':>10}")
    for name, r in results.items():
        print(f"{name:<24}{r['exchanges_in_range']:>14,}" + "".join(f"{r['queries_ms'][n]:>12}" for n in names)
              + f"{r['page_ms']:>10}")
    print(f"admin home page {home['page_ms']} ms (its counts {home['home_counts_ms']} ms)")
    print(f"\nwrote {args.out}")
    if not args.db:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
