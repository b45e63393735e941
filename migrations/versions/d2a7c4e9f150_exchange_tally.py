"""exchange_tally: the exchanges counted per day and per value of every column a statistic depends on, kept by triggers; the indexes it replaces are dropped

Revision ID: d2a7c4e9f150
Revises: c5d9e1f3a7b2
Create Date: 2026-12-02 03:00:00

Why: at a million exchanges the statistics page over a year read every
exchange's entry of ix_exchange_analytics (0.7 s on a 2-core machine), and
the admin home page every entry of ix_exchange_tally.  The database itself
now keeps the counts, in the same transaction as each insert, update and
delete of an exchange, whichever code makes it (a chat, a review, a bulk
update, the CLI): a year is a few tens of thousands of tally rows.  Those
two indexes had no other reader and are dropped.

On SQLite a later migration that rebuilds ``exchange`` (batch mode) drops
its triggers with the old table: it must create them again.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd2a7c4e9f150'
down_revision = 'c5d9e1f3a7b2'
branch_labels = None
depends_on = None

# The same words as chatbot.database (a migration keeps its own copy).
KEY = ("day", "channel", "model_version", "route", "status", "feedback", "corrected")
COLUMNS = "route, status, feedback, channel, model_version"
TRACKED = ("created_at", "route", "status", "feedback", "channel", "model_version", "answer", "corrected_answer")


def _values(row, dialect):
    """The tally key of ``row`` (NEW or OLD, or a table's name), in KEY's order."""
    day = (f"substr({row}.created_at, 1, 10)" if dialect == "sqlite"
           else f"to_char({row}.created_at, 'YYYY-MM-DD')")
    corrected = (f"CASE WHEN {row}.status = 'reviewed' AND {row}.corrected_answer IS NOT NULL "
                 f"AND {row}.corrected_answer <> {row}.answer THEN 1 ELSE 0 END")
    return (day, f"{row}.channel", f"coalesce({row}.model_version, '')", f"{row}.route", f"{row}.status",
            f"coalesce({row}.feedback, '')", corrected)


def _add(row, dialect):
    """SQL that counts ``row`` in: its tally row made or incremented."""
    return (f"INSERT INTO exchange_tally ({', '.join(KEY)}, exchanges) VALUES ({', '.join(_values(row, dialect))}, 1) "
            f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET exchanges = exchange_tally.exchanges + 1")


def _remove(row, dialect):
    """SQL that counts ``row`` out (a tally row at zero is deleted)."""
    where = " AND ".join(f"{name} = {value}" for name, value in zip(KEY, _values(row, dialect)))
    return (f"UPDATE exchange_tally SET exchanges = exchanges - 1 WHERE {where}; "
            f"DELETE FROM exchange_tally WHERE exchanges <= 0 AND {where}")


def _changed(dialect):
    values_old, values_new = _values("OLD", dialect), _values("NEW", dialect)
    if dialect == "sqlite":
        return " OR ".join(f"{o} IS NOT {n}" for o, n in zip(values_old, values_new))
    return f"({', '.join(values_old)}) IS DISTINCT FROM ({', '.join(values_new)})"


def create_triggers(dialect):
    if dialect == "sqlite":
        op.execute(f"CREATE TRIGGER exchange_tally_insert AFTER INSERT ON exchange "
                   f"BEGIN {_add('NEW', dialect)}; END")
        op.execute(f"CREATE TRIGGER exchange_tally_delete AFTER DELETE ON exchange "
                   f"BEGIN {_remove('OLD', dialect)}; END")
        op.execute(f"CREATE TRIGGER exchange_tally_update AFTER UPDATE OF {', '.join(TRACKED)} ON exchange "
                   f"WHEN {_changed(dialect)} BEGIN {_remove('OLD', dialect)}; {_add('NEW', dialect)}; END")
        return
    op.execute(f"""CREATE FUNCTION exchange_tally_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NOT ({_changed(dialect)}) THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        {_remove('OLD', dialect)};
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        {_add('NEW', dialect)};
    END IF;
    RETURN NULL;
END
$$""")
    op.execute(f"CREATE TRIGGER exchange_tally AFTER INSERT OR DELETE OR UPDATE OF {', '.join(TRACKED)} "
               f"ON exchange FOR EACH ROW EXECUTE FUNCTION exchange_tally_count()")


def drop_triggers(dialect):
    if dialect == "sqlite":
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS exchange_tally_{name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS exchange_tally ON exchange")
        op.execute("DROP FUNCTION IF EXISTS exchange_tally_count()")


def make_tally(dialect):
    """The table, the exchanges already there counted once, and the triggers
    (also e4c7b2f9a1d6's downgrade, which brings the table back)."""
    options = {"sqlite_with_rowid": False} if dialect == "sqlite" else {}
    op.create_table(
        'exchange_tally',
        sa.Column('day', sa.String(length=10), nullable=False),
        sa.Column('channel', sa.String(length=20), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('route', sa.String(length=20), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('feedback', sa.String(length=20), nullable=False),
        sa.Column('corrected', sa.Integer(), nullable=False),
        sa.Column('exchanges', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(*KEY, name='pk_exchange_tally'),
        **options,
    )
    # The exchanges already there, counted once; from here on the triggers count.
    op.execute(f"INSERT INTO exchange_tally ({', '.join(KEY)}, exchanges) "
               f"SELECT {', '.join(_values('exchange', dialect))}, count(*) FROM exchange "
               f"GROUP BY {', '.join(_values('exchange', dialect))}")
    create_triggers(dialect)


def upgrade():
    make_tally(op.get_bind().dialect.name)
    op.drop_index('ix_exchange_analytics', table_name='exchange')
    op.drop_index('ix_exchange_tally', table_name='exchange')


def downgrade():
    dialect = op.get_bind().dialect.name
    op.create_index('ix_exchange_tally', 'exchange', ['feedback', 'route', 'channel', 'status'], unique=False)
    if dialect == "sqlite":
        op.execute(f"CREATE INDEX ix_exchange_analytics ON exchange (substr(created_at, 1, 10), {COLUMNS}, created_at)")
    else:
        op.execute(f"CREATE INDEX ix_exchange_analytics ON exchange (created_at, {COLUMNS})")
    drop_triggers(dialect)
    op.drop_table('exchange_tally')
