"""kakao_late_answer: KakaoTalk answers ready after Kakao stopped waiting, kept until delivered

Revision ID: b5e8c2a7d4f1
Revises: a9d3f6b2c8e1
Create Date: 2026-12-02 16:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b5e8c2a7d4f1'
down_revision = 'a9d3f6b2c8e1'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'kakao_late_answer',
        sa.Column('session_id', sa.String(length=64), nullable=False),
        sa.Column('exchange_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('delivered_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('session_id'),
    )
    with op.batch_alter_table('kakao_late_answer', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_kakao_late_answer_created_at'), ['created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('kakao_late_answer', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_kakao_late_answer_created_at'))
    op.drop_table('kakao_late_answer')
