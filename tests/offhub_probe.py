"""Which OS thread runs a reviewer's heavy work, in a process that gevent
has patched as the gunicorn worker is (tests/test_offhub.py runs this as a
subprocess: ``python tests/offhub_probe.py DATABASE MODEL_DIR``).

Each heavy admin request is made through Flask's test client in a greenlet,
as the worker makes it for a connection, and the corrections are refreshed
as a chat refreshes them.  For each, it prints (as JSON) the status, the
size of the answer, and the native thread ids that ran its SQL statements
on ``exchange``, beside the event loop's own.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from urllib.parse import urlencode  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import sqlalchemy as sa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatbot import create_app, retrain  # noqa: E402
from chatbot.batching import ReplyBatcher  # noqa: E402
from chatbot.corrections import Corrections  # noqa: E402
from chatbot.extensions import db  # noqa: E402

native_id = monkey.get_original("threading", "get_native_id")


class Runner:
    """What retrain.start gets back instead of a training process."""
    pid = 0


def main(database, models):
    app = create_app({"SECRET_KEY": "probe", "SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}",
                      "MODEL_DIR": models, "WTF_CSRF_ENABLED": False, "HTTP_LIMIT": ""})
    threads = []
    with app.app_context():
        @sa.event.listens_for(db.engine, "before_cursor_execute")
        def record(conn, cursor, statement, parameters, context, executemany):
            if "exchange" in statement:
                threads.append(native_id())

    wrote = []
    real_write = retrain._write_pairs

    def write_pairs(path, pairs):
        wrote.append(native_id())
        return real_write(path, pairs)

    retrain._write_pairs = write_pairs
    retrain._start_runner = lambda *args: Runner()

    client = app.test_client()
    assert client.post("/login", data={"username": "probe", "password": "probe-password"}).status_code == 302
    with app.app_context():
        key = db.session.scalar(sa.text("SELECT question_key FROM exchange WHERE status = 'unreviewed' LIMIT 1"))
    requests = {
        "home": ("GET", "/admin/", None),
        "queue": ("GET", "/admin/queue/", None),
        "queue_next": ("GET", "/admin/queue/next", None),
        "queue_group": ("GET", "/admin/queue/group?" + urlencode({"key": key}), None),
        "reviewed_pairs_csv": ("GET", "/admin/queue/export.csv", None),
        "analytics": ("GET", "/admin/analytics/?from=2000-01-01&to=2999-12-31&period=week", None),
        "analytics_csv": ("GET", "/admin/analytics/periods.csv", None),
        "list": ("GET", "/admin/exchange/", None),
        "search": ("GET", "/admin/exchange/?search=%EC%A7%88%EB%AC%B8", None),
        "export_csv": ("POST", "/admin/export/", {"file_format": "csv"}),
        "export_jsonl": ("POST", "/admin/export/", {"file_format": "jsonl"}),
        "retrain": ("POST", "/admin/models/retrain", {}),
    }
    report = {"hub": native_id(), "results": {}}
    for name, (method, url, data) in requests.items():
        threads.clear()

        def load():  # in a greenlet, as the worker serves a connection; the body too
            response = client.open(url, method=method, data=data)
            body = response.get_data(as_text=True)
            # Scripts rendered on the thread carry the nonce that the response's CSP allows.
            nonces = set(re.findall(r'<script[^>]* nonce="([^"]+)"', body))
            policy = response.headers.get("Content-Security-Policy", "")
            return response.status_code, len(body), sorted(nonces), all(f"'nonce-{n}'" in policy for n in nonces)

        status, size, nonces, allowed = gevent.spawn(load).get()
        report["results"][name] = {"status": status, "bytes": size, "threads": sorted(set(threads)),
                                   "script_nonces": nonces, "nonces_allowed": allowed}
    report["results"]["retrain"]["write_threads"] = sorted(set(wrote))

    corrections = Corrections(ReplyBatcher(1).run, 0.65, 2.0)
    threads.clear()

    def lookup():
        with app.app_context():
            return corrections.lookup("질문 1 이에요?")

    gevent.spawn(lookup).get()
    report["results"]["corrections_refresh"] = {"status": 200, "bytes": 0, "threads": sorted(set(threads)),
                                                "script_nonces": [], "nonces_allowed": True}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
