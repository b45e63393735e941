"""question_group: the review queue's groups of questions alike in meaning

Revision ID: f6a2d8c4b1e7
Revises: e3b7a1c9d5f2
Create Date: 2026-12-02 15:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f6a2d8c4b1e7'
down_revision = 'e3b7a1c9d5f2'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'question_group',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('question_key', sa.String(length=1000), nullable=False),
        sa.Column('group_key', sa.String(length=1000), nullable=False),
        sa.Column('encoder', sa.String(length=40), nullable=False),
        sa.Column('vector', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('question_key'),
    )
    with op.batch_alter_table('question_group', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_question_group_group_key'), ['group_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_question_group_created_at'), ['created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('question_group', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_question_group_created_at'))
        batch_op.drop_index(batch_op.f('ix_question_group_group_key'))
    op.drop_table('question_group')
