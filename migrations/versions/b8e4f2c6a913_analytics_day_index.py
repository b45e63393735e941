"""analytics without sorting every row: on SQLite the covering index by day first; the corrected rows' index with question_key and feedback; a partial index of the 👎 and unanswered rows by question_key

Revision ID: b8e4f2c6a913
Revises: a7d3e9b1c456
Create Date: 2026-11-28 02:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b8e4f2c6a913'
down_revision = 'a7d3e9b1c456'
branch_labels = None
depends_on = None

# The same words as chatbot.database (a migration keeps its own copy).
DAY_SQL = "substr(created_at, 1, 10)"
COLUMNS = "route, status, feedback, channel, model_version"
CORRECTED_SQL = "status = 'reviewed' AND corrected_answer IS NOT NULL AND corrected_answer <> answer"
WRONG_SQL = "feedback = 'down' OR route IN ('fallback', 'unsure')"


def _corrected(columns):
    op.create_index('ix_exchange_corrected', 'exchange', columns, unique=False,
                    sqlite_where=sa.text(CORRECTED_SQL), postgresql_where=sa.text(CORRECTED_SQL))


def upgrade():
    if op.get_bind().dialect.name == 'sqlite':
        # Replaces the one by created_at first: SQLite groups by day in the index's order, no sort.
        op.drop_index('ix_exchange_analytics', table_name='exchange')
        op.execute(f"CREATE INDEX ix_exchange_analytics ON exchange ({DAY_SQL}, {COLUMNS}, created_at)")
    op.drop_index('ix_exchange_corrected', table_name='exchange')
    _corrected(['status', 'created_at', 'route', 'channel', 'model_version', 'question_key', 'feedback'])
    op.create_index('ix_exchange_wrong', 'exchange', ['question_key', 'created_at', 'feedback', 'route'],
                    unique=False, sqlite_where=sa.text(WRONG_SQL), postgresql_where=sa.text(WRONG_SQL))


def downgrade():
    op.drop_index('ix_exchange_wrong', table_name='exchange')
    op.drop_index('ix_exchange_corrected', table_name='exchange')
    _corrected(['created_at', 'route', 'channel', 'model_version'])
    if op.get_bind().dialect.name == 'sqlite':
        op.drop_index('ix_exchange_analytics', table_name='exchange')
        op.execute(f"CREATE INDEX ix_exchange_analytics ON exchange (created_at, {COLUMNS})")
