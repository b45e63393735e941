"""ix_exchange_corrected by question_key first: the statistics' groups that went wrong count the corrected rows in key order, with no sort

Why: analytics.top_groups counts each question's corrected rows of a range
(GROUP BY question_key).  The index began with (status, created_at), so a
year's corrected rows were read in time order and sorted by key in a
temporary B-tree: at a million exchanges (60,000 corrected) that sort was
half of the statistics page's top groups.  In (question_key, created_at,
feedback, route) order, like ix_exchange_wrong, they are counted as they are
read, and the question a top group shows is found by its key and range.
The columns the index had for the older statistics (channel,
model_version) are read from exchange_tally since d2a7c4e9f150.

Revision ID: c8f3a5d1e9b4
Revises: b5e8c2a7d4f1
Create Date: 2026-12-02 17:30:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c8f3a5d1e9b4'
down_revision = 'b5e8c2a7d4f1'
branch_labels = None
depends_on = None

# The same words as chatbot.database (a migration keeps its own copy).
CORRECTED_SQL = "status = 'reviewed' AND corrected_answer IS NOT NULL AND corrected_answer <> answer"
NEW_COLUMNS = ['status', 'question_key', 'created_at', 'feedback', 'route']
OLD_COLUMNS = ['status', 'created_at', 'route', 'channel', 'model_version', 'question_key', 'feedback']


def _replace(columns):
    op.drop_index('ix_exchange_corrected', table_name='exchange')
    op.create_index('ix_exchange_corrected', 'exchange', columns, unique=False,
                    sqlite_where=sa.text(CORRECTED_SQL), postgresql_where=sa.text(CORRECTED_SQL))


def upgrade():
    _replace(NEW_COLUMNS)


def downgrade():
    _replace(OLD_COLUMNS)
