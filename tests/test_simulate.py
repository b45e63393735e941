"""bench/simulate.py (`make simulate`): a month of made-up chats for the
statistics page, and never into a database with real ones."""
import sqlite3

import pytest

from bench import simulate


def count(db_file, where="1=1"):
    with sqlite3.connect(db_file) as con:
        return con.execute(f"SELECT count(*) FROM exchange WHERE {where}").fetchone()[0]


def test_simulate_fills_a_database_of_its_own_and_adds_to_its_own_rows(tmp_path, capsys):
    db_file = tmp_path / "demo.db"
    simulate.main(["--db", str(db_file), "--days", "3", "--per-day", "20"])
    first = count(db_file)
    assert first > 20
    assert count(db_file, "session_id LIKE 'sim-%'") == first
    assert f"added {first:,} simulated exchanges over 3 days" in capsys.readouterr().out

    simulate.main(["--db", str(db_file), "--days", "3", "--per-day", "20", "--seed", "2"])  # only its own rows: fine
    assert count(db_file) > first


@pytest.mark.parametrize("session_id", ["a1b2c3", None])  # a chat; an imported pair has none
def test_simulate_refuses_a_database_with_real_exchanges(tmp_path, capsys, session_id):
    db_file = tmp_path / "real.db"
    simulate.main(["--db", str(db_file), "--days", "2", "--per-day", "10"])
    with sqlite3.connect(db_file) as con:
        con.execute("INSERT INTO exchange (question, question_key, answer, created_at, session_id, route, status, channel) "
                    "VALUES ('진짜 질문', '진짜 질문', '진짜 답', '2026-11-01 10:00:00', ?, 'known', 'unreviewed', 'web')",
                    (session_id,))
    before = count(db_file)

    with pytest.raises(SystemExit) as exit_info:
        simulate.main(["--db", str(db_file), "--days", "2", "--per-day", "10"])
    assert exit_info.value.code == 2
    assert "holds 1 exchanges that are not simulated" in capsys.readouterr().err
    assert count(db_file) == before
