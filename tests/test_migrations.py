"""The migrations: the newest matches the models, and each one can be undone."""
from functools import partial

import flask_migrate
import sqlalchemy as sa

from chatbot.extensions import db


def columns(app):
    with app.app_context():
        return {c["name"] for c in sa.inspect(db.engine).get_columns("exchange")}


def test_feedback_migration_upgrades_and_downgrades(app):
    assert "feedback" in columns(app)
    with app.app_context():
        flask_migrate.downgrade(revision="91205e2f4baf")
    assert "feedback" not in columns(app)
    with app.app_context():
        flask_migrate.upgrade()
        db.session.execute(sa.text(
            "INSERT INTO exchange (question, question_key, answer, created_at, route, status, feedback) "
            "VALUES ('q', 'q', 'a', '2024-01-01', 'model', 'unreviewed', 'down')"))
        db.session.commit()
    assert "feedback" in columns(app)


def test_feedback_values_are_checked_by_the_database(app):
    import pytest
    with app.app_context(), pytest.raises(sa.exc.IntegrityError):
        db.session.execute(sa.text(
            "INSERT INTO exchange (question, question_key, answer, created_at, route, status, feedback) "
            "VALUES ('q', 'q', 'a', '2024-01-01', 'model', 'unreviewed', 'meh')"))
        db.session.commit()


def test_models_match_the_migrations(app):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    with app.app_context(), db.engine.connect() as connection:
        from chatbot.database import compared_objects

        context = MigrationContext.configure(connection, opts={"include_object": compared_objects})
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def test_route_known_migration_upgrades_and_downgrades(app):
    import pytest

    insert = ("INSERT INTO exchange (question, question_key, answer, created_at, route, status) "
              "VALUES ('q', 'q', 'a', '2024-01-01', :route, 'unreviewed')")
    with app.app_context():
        db.session.execute(sa.text(insert), {"route": "known"})
        db.session.commit()
        flask_migrate.downgrade(revision="b920c99c8ad7")
        assert db.session.execute(sa.text("SELECT route FROM exchange")).scalar_one() == "model"
        with pytest.raises(sa.exc.IntegrityError):
            db.session.execute(sa.text(insert), {"route": "known"})
            db.session.commit()
        db.session.rollback()
        flask_migrate.upgrade()
        db.session.execute(sa.text(insert), {"route": "known"})
        db.session.commit()
        with pytest.raises(sa.exc.IntegrityError):
            db.session.execute(sa.text(insert), {"route": "guessed"})
            db.session.commit()
        db.session.rollback()


def test_channel_migration_fills_old_rows_as_the_chat_page_and_checks_values(app):
    import pytest

    old_insert = ("INSERT INTO exchange (question, question_key, answer, created_at, route, status) "
                  "VALUES ('old', 'old', 'a', '2024-01-01', 'model', 'unreviewed')")
    insert = ("INSERT INTO exchange (question, question_key, answer, created_at, route, status, channel) "
              "VALUES ('q', 'q', 'a', '2024-01-01', 'model', 'unreviewed', :channel)")
    with app.app_context():
        flask_migrate.downgrade(revision="e7b2c4d6f813")
        assert "channel" not in columns(app)
        db.session.execute(sa.text(old_insert))
        db.session.commit()
        flask_migrate.upgrade()
        assert db.session.execute(sa.text("SELECT channel FROM exchange")).scalar_one() == "web"
        db.session.execute(sa.text(insert), {"channel": "kakao"})
        db.session.commit()
        with pytest.raises(sa.exc.IntegrityError):
            db.session.execute(sa.text(insert), {"channel": "fax"})
            db.session.commit()
        db.session.rollback()
        assert "api_key" in sa.inspect(db.engine).get_table_names()
        flask_migrate.downgrade(revision="e7b2c4d6f813")
        assert "api_key" not in sa.inspect(db.engine).get_table_names()
        assert db.session.execute(sa.text("SELECT count(*) FROM exchange")).scalar_one() == 2


def test_analytics_day_index_migration_upgrades_and_downgrades(app):
    """b8e4f2c6a913: on SQLite the analytics index by day first (an expression
    index), the corrected rows' index with question_key and feedback, and the
    partial index of the 👎 and unanswered rows; undone, the indexes before it."""
    def indexes():
        with app.app_context():
            return {name: sql for name, sql in db.session.execute(sa.text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name IN "
                "('ix_exchange_analytics', 'ix_exchange_corrected', 'ix_exchange_wrong')"))}

    def columns_of(sql):
        return sql.split(" ON exchange ", 1)[1].split(" WHERE ")[0].replace('"', "").replace(" ", "")

    with app.app_context():
        flask_migrate.downgrade(revision="b8e4f2c6a913")  # d2a7c4e9f150 drops ix_exchange_analytics
    new = indexes()
    assert columns_of(new["ix_exchange_analytics"]) == \
        "(substr(created_at,1,10),route,status,feedback,channel,model_version,created_at)"
    assert columns_of(new["ix_exchange_corrected"]) == \
        "(status,created_at,route,channel,model_version,question_key,feedback)"
    assert columns_of(new["ix_exchange_wrong"]) == "(question_key,created_at,feedback,route)"
    assert "WHERE feedback = 'down' OR route IN ('fallback', 'unsure')" in new["ix_exchange_wrong"]
    with app.app_context():
        flask_migrate.downgrade(revision="a7d3e9b1c456")
    old = indexes()
    assert set(old) == {"ix_exchange_analytics", "ix_exchange_corrected"}
    assert columns_of(old["ix_exchange_analytics"]) == "(created_at,route,status,feedback,channel,model_version)"
    assert columns_of(old["ix_exchange_corrected"]) == "(created_at,route,channel,model_version)"
    with app.app_context():
        flask_migrate.upgrade(revision="b8e4f2c6a913")
    assert indexes() == new


TALLY_ROWS = [  # (created_at, route, status, feedback, channel, model_version, answer, corrected_answer)
    ("2024-01-01 09:00:00", "model", "unreviewed", None, "web", "v1", "a", None),
    ("2024-01-01 23:59:59.5", "model", "unreviewed", None, "web", "v1", "a", None),
    ("2024-01-02 00:00:00", "known", "reviewed", "down", "kakao", None, "a", "b"),
    ("2024-01-02 10:00:00", "import", "reviewed", None, "web", None, "a", "a"),
]


def tally(app):
    with app.app_context():
        return sorted(tuple(row) for row in db.session.execute(sa.text(
            "SELECT day, channel, model_version, route, status, feedback, corrected, exchanges FROM exchange_tally")))


def recount(app):
    """What exchange_tally must hold, counted from the exchanges one by one."""
    from collections import Counter
    with app.app_context():
        rows = db.session.execute(sa.text("SELECT created_at, channel, model_version, route, status, feedback, "
                                          "answer, corrected_answer FROM exchange")).all()
    counted = Counter((str(at)[:10], channel, version or "", route, status, feedback or "",
                       int(status == "reviewed" and fixed is not None and fixed != answer))
                      for at, channel, version, route, status, feedback, answer, fixed in rows)
    return sorted((*key, n) for key, n in counted.items())


def object_names(app, kind):
    """The names of the SQLite file's objects of one kind (table, index, trigger)."""
    with app.app_context():
        return {name for (name,) in db.session.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type = :kind"), {"kind": kind})}


def downgrade_with_tally_rows(app, revision):
    """The database at ``revision``, with TALLY_ROWS as exchanges (raw SQL: the model may be newer)."""
    with app.app_context():
        flask_migrate.downgrade(revision=revision)
        for row in TALLY_ROWS:
            db.session.execute(sa.text(
                "INSERT INTO exchange (question, question_key, answer, created_at, route, status, feedback, channel, "
                "model_version, corrected_answer) VALUES ('q', 'q', :answer, :at, :route, :status, :feedback, "
                ":channel, :version, :fixed)"),
                dict(zip(("at", "route", "status", "feedback", "channel", "version", "answer", "fixed"), row)))
        db.session.commit()


def test_exchange_tally_migration_counts_what_is_there_and_is_undone(app):
    """d2a7c4e9f150 (replaced by exchange_daily since): the exchanges already there are counted once, the
    triggers count every later insert, update and delete, and the two
    indexes the tally replaces are gone; undone, the table and its triggers
    are gone and the indexes are back."""
    names = partial(object_names, app)
    downgrade_with_tally_rows(app, "c5d9e1f3a7b2")
    assert "exchange_tally" not in names("table")
    with app.app_context():
        flask_migrate.upgrade(revision="d2a7c4e9f150")
    assert tally(app) == recount(app) == [
        ("2024-01-01", "web", "v1", "model", "unreviewed", "", 0, 2),
        ("2024-01-02", "kakao", "", "known", "reviewed", "down", 1, 1),
        ("2024-01-02", "web", "", "import", "reviewed", "", 0, 1),
    ]
    assert {"ix_exchange_analytics", "ix_exchange_tally"} & names("index") == set()
    assert names("trigger") == {"exchange_tally_insert", "exchange_tally_update", "exchange_tally_delete"}
    with app.app_context():
        db.session.execute(sa.text("UPDATE exchange SET feedback = 'up' WHERE route = 'model'"))
        db.session.execute(sa.text("DELETE FROM exchange WHERE route = 'import'"))
        db.session.commit()
    assert tally(app) == recount(app) == [
        ("2024-01-01", "web", "v1", "model", "unreviewed", "up", 0, 2),
        ("2024-01-02", "kakao", "", "known", "reviewed", "down", 1, 1),
    ]
    with app.app_context():
        flask_migrate.downgrade(revision="c5d9e1f3a7b2")
    assert "exchange_tally" not in names("table")
    assert names("trigger") == set()
    assert {"ix_exchange_analytics", "ix_exchange_tally"} <= names("index")
    with app.app_context():
        flask_migrate.upgrade(revision="d2a7c4e9f150")
    assert tally(app) == recount(app)


def daily(app):
    """exchange_daily's rows, each with its non-zero counts."""
    from chatbot.database import DAILY_COUNTS
    with app.app_context():
        rows = db.session.execute(sa.text(
            f"SELECT day, channel, model_version, imported, {', '.join(DAILY_COUNTS)} FROM exchange_daily")).all()
    return {tuple(row[:4]): {name: n for name, n in zip(DAILY_COUNTS, row[4:]) if n} for row in rows}


def test_exchange_daily_migration_counts_what_is_there_and_is_undone(app):
    """e4c7b2f9a1d6: exchange_daily replaces exchange_tally. The exchanges
    already there are counted once, one column per number, and its triggers
    count every later change; undone, exchange_tally is back, counted again,
    with its own triggers."""
    names = partial(object_names, app)
    downgrade_with_tally_rows(app, "c8f3a5d1e9b4")
    assert "exchange_daily" not in names("table") and tally(app) == recount(app)
    with app.app_context():
        flask_migrate.upgrade()
    assert "exchange_tally" not in names("table")
    assert names("trigger") == {"exchange_daily_insert", "exchange_daily_update", "exchange_daily_delete"}
    assert daily(app) == {
        ("2024-01-01", "web", "v1", 0): {"exchanges": 2, "model": 2, "unreviewed": 2},
        ("2024-01-02", "kakao", "", 0): {"exchanges": 1, "known": 1, "down": 1, "reviewed": 1, "corrected": 1},
        ("2024-01-02", "web", "", 1): {"exchanges": 1, "reviewed": 1},
    }
    with app.app_context():
        db.session.execute(sa.text("UPDATE exchange SET feedback = 'down', route = 'unsure' WHERE route = 'model'"))
        db.session.execute(sa.text("DELETE FROM exchange WHERE route = 'import'"))
        db.session.commit()
    assert daily(app) == {
        ("2024-01-01", "web", "v1", 0): {"exchanges": 2, "unsure": 2, "down": 2, "unreviewed": 2,
                                         "waiting_down": 2, "waiting_unsure": 2},
        ("2024-01-02", "kakao", "", 0): {"exchanges": 1, "known": 1, "down": 1, "reviewed": 1, "corrected": 1},
    }
    with app.app_context():
        flask_migrate.downgrade(revision="c8f3a5d1e9b4")
    assert "exchange_daily" not in names("table")
    assert names("trigger") == {"exchange_tally_insert", "exchange_tally_update", "exchange_tally_delete"}
    assert tally(app) == recount(app) == [
        ("2024-01-01", "web", "v1", "unsure", "unreviewed", "down", 0, 2),
        ("2024-01-02", "kakao", "", "known", "reviewed", "down", 1, 1),
    ]
    with app.app_context():
        flask_migrate.upgrade()
    assert names("trigger") == {"exchange_daily_insert", "exchange_daily_update", "exchange_daily_delete"}
    assert daily(app)[("2024-01-01", "web", "v1", 0)]["waiting_unsure"] == 2


def test_the_corrected_rows_index_is_by_question_key_and_is_undone(app):
    """c8f3a5d1e9b4: ix_exchange_corrected is (status, question_key,
    created_at, feedback, route) on the corrected rows; undone, it is the
    one before, by time first."""
    def corrected_index():
        with app.app_context():
            return db.session.scalar(sa.text(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'ix_exchange_corrected'"))

    def columns_of(sql):
        return sql.split(" ON exchange ", 1)[1].split(" WHERE ")[0].replace('"', "").replace(" ", "")

    new = corrected_index()
    assert columns_of(new) == "(status,question_key,created_at,feedback,route)"
    assert new.endswith("WHERE status = 'reviewed' AND corrected_answer IS NOT NULL AND corrected_answer <> answer")
    with app.app_context():
        flask_migrate.downgrade(revision="b5e8c2a7d4f1")
    assert columns_of(corrected_index()) == "(status,created_at,route,channel,model_version,question_key,feedback)"
    with app.app_context():
        flask_migrate.upgrade()
    assert corrected_index() == new


def test_reviewer_session_token_migration_gives_each_reviewer_a_token_and_is_undone(app):
    """c5d2e8f4a711: every reviewer already there gets a random token of their
    own; undone, the column and its unique index are gone."""
    import pytest

    def reviewer_columns():
        with app.app_context():
            return {c["name"] for c in sa.inspect(db.engine).get_columns("reviewer")}

    insert = "INSERT INTO reviewer (username, password_hash, created_at) VALUES (:name, 'x', '2024-01-01')"
    with app.app_context():
        flask_migrate.downgrade(revision="b8e4f2c6a913")
    assert "session_token" not in reviewer_columns()
    with app.app_context():
        for name in ("kim", "lee"):
            db.session.execute(sa.text(insert), {"name": name})
        db.session.commit()
        flask_migrate.upgrade()
        tokens = db.session.execute(sa.text("SELECT username, session_token FROM reviewer")).all()
        assert sorted(name for name, _ in tokens) == ["kim", "lee"]
        assert len({token for _, token in tokens}) == 2
        assert all(len(token) >= 40 for _, token in tokens)
        with pytest.raises(sa.exc.IntegrityError):  # a token names one reviewer
            db.session.execute(sa.text("UPDATE reviewer SET session_token = :token WHERE username = 'lee'"),
                               {"token": tokens[0][1] if tokens[0][0] == "kim" else tokens[1][1]})
            db.session.commit()
        db.session.rollback()
        with pytest.raises(sa.exc.IntegrityError):  # and every reviewer has one
            db.session.execute(sa.text(insert), {"name": "park"})
            db.session.commit()
        db.session.rollback()
        flask_migrate.downgrade(revision="b8e4f2c6a913")
    assert "session_token" not in reviewer_columns()
    with app.app_context():
        assert db.session.execute(sa.text("SELECT count(*) FROM reviewer")).scalar_one() == 2
        flask_migrate.upgrade()
    assert "session_token" in reviewer_columns()


def tables(app):
    with app.app_context():
        return set(sa.inspect(db.engine).get_table_names())


def table_is_made_and_undone(app, table, insert, parameters, before, still):
    """A migration that makes ``table``: it is there, ``insert`` (with
    ``parameters``) works once and a second time breaks its key; downgraded
    to ``before`` it is gone and ``still`` is not; upgraded, it is back."""
    import pytest

    assert table in tables(app)
    with app.app_context():
        db.session.execute(sa.text(insert), parameters)
        db.session.commit()
        with pytest.raises(sa.exc.IntegrityError):
            db.session.execute(sa.text(insert), parameters)
            db.session.commit()
        db.session.rollback()
        flask_migrate.downgrade(revision=before)
    assert table not in tables(app) and still in tables(app)
    with app.app_context():
        flask_migrate.upgrade()
    assert table in tables(app)


def test_question_meaning_migration_makes_the_table_and_is_undone(app):
    """e3b7a1c9d5f2: the table of stored meaning vectors, one row per
    encoder and question; undone, it is gone and nothing else changed."""
    table_is_made_and_undone(
        app, "question_meaning", "INSERT INTO question_meaning (encoder, question_hash, vector, created_at) "
        "VALUES ('e5-small', :h, x'00', '2024-01-01')", {"h": "a" * 64}, before="d2a7c4e9f150", still="exchange")


def test_question_group_migration_makes_the_table_and_is_undone(app):
    """f6a2d8c4b1e7: the review queue's groups, one row per question key,
    found by group; undone, the table is gone and nothing else changed."""
    with app.app_context():
        indexes = {index["name"] for index in sa.inspect(db.engine).get_indexes("question_group")}
    assert "ix_question_group_group_key" in indexes
    table_is_made_and_undone(
        app, "question_group", "INSERT INTO question_group (question_key, group_key, encoder, vector, created_at) "
        "VALUES (:k, '배고프', 'e5-small', x'00', '2024-01-01')", {"k": "배고프"},
        before="e3b7a1c9d5f2", still="question_meaning")


def test_the_unused_reviewed_answer_index_is_dropped_and_comes_back_on_downgrade(app):
    """a9d3f6b2c8e1: ix_exchange_key_status_reviewed (no query reads it since
    the reviewed answers are held in memory) is gone; undone, it is back."""
    def indexes():
        with app.app_context():
            return {index["name"] for index in sa.inspect(db.engine).get_indexes("exchange")}

    assert "ix_exchange_key_status_reviewed" not in indexes()
    assert "ix_exchange_key_status_created" in indexes()
    with app.app_context():
        flask_migrate.downgrade(revision="f6a2d8c4b1e7")
    assert "ix_exchange_key_status_reviewed" in indexes()
    with app.app_context():
        flask_migrate.upgrade()
    assert "ix_exchange_key_status_reviewed" not in indexes()


def test_kakao_late_answer_migration_makes_the_table_and_is_undone(app):
    """b5e8c2a7d4f1: late KakaoTalk answers, one row per chat session."""
    table_is_made_and_undone(
        app, "kakao_late_answer", "INSERT INTO kakao_late_answer (session_id, exchange_id, created_at) "
        "VALUES ('kakao-1', 1, '2024-01-01')", {}, before="a9d3f6b2c8e1", still="question_group")
