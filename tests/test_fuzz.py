"""scripts/fuzz_socket.py against a real server (gunicorn), as CI runs it:
at least 1,000 malformed Socket.IO events, and the server shrugs them off."""
import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

from live_server import ROOT, LiveServer, prepare

pytestmark = pytest.mark.fuzz


def test_fuzz_a_running_server(tmp_path):
    app = prepare(tmp_path)
    # Every fuzz connection comes from 127.0.0.1: the per-address caps are
    # raised here, and the address's cool-down after a flood is off
    # (tests/test_hostile.py pushes past them); the per-session rate limit
    # stays, and the floods must meet it.
    server = LiveServer(tmp_path, env={"MAX_CONNECTIONS_PER_ADDRESS": "1000", "CONNECT_RATE": "0",
                                       "ADDRESS_MESSAGE_RATE": "0", "FLOOD_COOLDOWN_SECONDS": "0"}).start()
    try:
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_socket.py"), server.url,
                              "--events", "1000", "--timeout", "60"],
                             capture_output=True, text=True, timeout=300)
        alive = server.alive()
    finally:
        server.stop()
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    print(summary)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:] + server.log()
    counts = json.loads(run.stdout[:run.stdout.rindex("\n}") + 2])
    assert counts["ok"] and alive and counts["server_alive"] and counts["answers_after"]
    assert counts["bad_events_sent"] >= 1000
    assert counts["unanswered"] == 0 and counts["problems"] == []
    assert counts["errors_answered"] >= counts["bad_events_sent"]
    assert counts["error_codes"].get("rate_limited", 0) > 0  # the floods met the limit
    assert set(counts["closed_as_expected"]) >= {"frame over the payload limit", "not an Engine.IO packet"}
    assert counts["garbage_rows"] == 0 and counts["rows_stored"] == counts["replies"]
    assert "Traceback" not in server.log()  # nothing the fuzz sent made the server raise

    # the database holds the well-formed questions and nothing else
    from chatbot.database import Exchange
    from chatbot.extensions import db
    with app.app_context():
        rows = db.session.execute(sa.select(Exchange)).scalars().all()
        db.engine.dispose()
    assert len(rows) == counts["rows_stored"] + 1  # + the message sent after the fuzz
    for row in rows:
        assert row.session_id in counts["session_ids"], row.session_id  # a chat the fuzz started
        assert row.question.split(" #")[0] in {"안녕하세요", "배고파", "날씨 어때", "심심해", "고마워", "너 누구야"}
        assert row.question.isprintable() and len(row.question) <= 500

