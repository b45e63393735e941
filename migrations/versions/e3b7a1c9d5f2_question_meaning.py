"""question_meaning: questions' meaning vectors kept across restarts and shared by processes

Revision ID: e3b7a1c9d5f2
Revises: d2a7c4e9f150
Create Date: 2026-12-02 13:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e3b7a1c9d5f2'
down_revision = 'd2a7c4e9f150'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'question_meaning',
        sa.Column('encoder', sa.String(length=40), nullable=False),
        sa.Column('question_hash', sa.String(length=64), nullable=False),
        sa.Column('vector', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('encoder', 'question_hash'),
    )
    with op.batch_alter_table('question_meaning', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_question_meaning_created_at'), ['created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('question_meaning', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_question_meaning_created_at'))
    op.drop_table('question_meaning')
