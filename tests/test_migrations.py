"""The migrations: the newest matches the models, and each one can be undone."""
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

        context = MigrationContext.configure(connection, opts={"include_object": compared_objects("sqlite")})
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
        flask_migrate.upgrade()
    assert indexes() == new


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
