"""indexes for /admin/analytics: a covering index over a date range, and a partial one for corrected rows

Revision ID: a7d3e9b1c456
Revises: f1c5a9e3d207
Create Date: 2026-11-28 01:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a7d3e9b1c456'
down_revision = 'f1c5a9e3d207'
branch_labels = None
depends_on = None

# The same words as chatbot.database.CORRECTED_SQL (a migration keeps its own copy).
CORRECTED_SQL = "status = 'reviewed' AND corrected_answer IS NOT NULL AND corrected_answer <> answer"


def upgrade():
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.create_index('ix_exchange_analytics',
                              ['created_at', 'route', 'status', 'feedback', 'channel', 'model_version'], unique=False)
        batch_op.create_index('ix_exchange_corrected', ['created_at', 'route', 'channel', 'model_version'],
                              unique=False, sqlite_where=sa.text(CORRECTED_SQL),
                              postgresql_where=sa.text(CORRECTED_SQL))


def downgrade():
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.drop_index('ix_exchange_corrected')
        batch_op.drop_index('ix_exchange_analytics')
