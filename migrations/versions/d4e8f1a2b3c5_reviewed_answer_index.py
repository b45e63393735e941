"""one index for the reviewed-answer lookup: (question_key, status, reviewed_at)

Every chat message looks up the newest reviewed answer for its question key.
With only the question_key index, SQLite walked every row ever stored under
that key (thousands, for a greeting) to find the reviewed ones; this index
answers from the index alone.  It starts with question_key, so it also
serves every lookup by key alone, and replaces that index.

Revision ID: d4e8f1a2b3c5
Revises: c3a1d7e5f902
Create Date: 2026-11-27 18:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'd4e8f1a2b3c5'
down_revision = 'c3a1d7e5f902'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.create_index('ix_exchange_key_status_reviewed', ['question_key', 'status', 'reviewed_at'],
                              unique=False)
        batch_op.drop_index('ix_exchange_question_key')


def downgrade():
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.create_index('ix_exchange_question_key', ['question_key'], unique=False)
        batch_op.drop_index('ix_exchange_key_status_reviewed')
