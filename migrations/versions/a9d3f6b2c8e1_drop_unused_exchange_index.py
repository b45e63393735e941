"""drop ix_exchange_key_status_reviewed: no query reads it any more

It served the per-message lookup of a key's newest reviewed answer
(d4e8f1a2b3c5); the reviewed answers have been held in each server process's
memory since (chatbot/corrections.py), and every remaining lookup by key is
served by ix_exchange_key_status_created (question_key, status, created_at).
The plans of the app's queries on SQLite, recorded over the test suite's
admin, chat, API, queue, statistics and export tests, used it nowhere.  One
index fewer to update on every insert and review.

Revision ID: a9d3f6b2c8e1
Revises: f6a2d8c4b1e7
Create Date: 2026-12-02 15:40:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'a9d3f6b2c8e1'
down_revision = 'f6a2d8c4b1e7'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.drop_index('ix_exchange_key_status_reviewed')


def downgrade():
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.create_index('ix_exchange_key_status_reviewed', ['question_key', 'status', 'reviewed_at'],
                              unique=False)
