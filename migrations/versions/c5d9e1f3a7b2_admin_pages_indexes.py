"""admin pages at a million exchanges: the review list's order as an index, one for the home page's counts, one for a queue group's newest rows

Revision ID: c5d9e1f3a7b2
Revises: c5d2e8f4a711
Create Date: 2026-12-02 12:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'c5d9e1f3a7b2'
down_revision = 'c5d2e8f4a711'
branch_labels = None
depends_on = None

# The same words as chatbot.database.QUEUE_RANK_SQL (a migration keeps its own copy).
QUEUE_RANK_SQL = ("CASE WHEN status = 'unreviewed' AND feedback = 'down' THEN 0 "
                  "WHEN status = 'unreviewed' AND route = 'unsure' THEN 1 "
                  "WHEN status = 'unreviewed' THEN 2 ELSE 3 END")


def upgrade():
    op.execute(f"CREATE INDEX ix_exchange_queue_rank ON exchange (({QUEUE_RANK_SQL}), created_at DESC, id DESC)")
    op.create_index('ix_exchange_tally', 'exchange', ['feedback', 'route', 'channel', 'status'], unique=False)
    op.create_index('ix_exchange_key_status_created', 'exchange', ['question_key', 'status', 'created_at'],
                    unique=False)


def downgrade():
    op.drop_index('ix_exchange_key_status_created', table_name='exchange')
    op.drop_index('ix_exchange_tally', table_name='exchange')
    op.drop_index('ix_exchange_queue_rank', table_name='exchange')
