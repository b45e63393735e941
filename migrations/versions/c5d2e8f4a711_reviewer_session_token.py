"""reviewer session token: a login holds it (not the reviewer's id), and a new one ends that reviewer's sessions

Revision ID: c5d2e8f4a711
Revises: b8e4f2c6a913
Create Date: 2026-11-29 22:00:00

"""
import secrets

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c5d2e8f4a711'
down_revision = 'b8e4f2c6a913'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('reviewer', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_token', sa.String(length=64), nullable=True))
    # Each existing reviewer gets a random token of their own; the cookies
    # made before (which held the id) match none, so everyone logs in again.
    reviewer = sa.table('reviewer', sa.column('id', sa.Integer), sa.column('session_token', sa.String))
    connection = op.get_bind()
    for (reviewer_id,) in connection.execute(sa.select(reviewer.c.id)).all():
        connection.execute(reviewer.update().where(reviewer.c.id == reviewer_id)
                           .values(session_token=secrets.token_urlsafe(32)))
    with op.batch_alter_table('reviewer', schema=None) as batch_op:
        batch_op.alter_column('session_token', existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index('ix_reviewer_session_token', ['session_token'], unique=True)


def downgrade():
    with op.batch_alter_table('reviewer', schema=None) as batch_op:
        batch_op.drop_index('ix_reviewer_session_token')
        batch_op.drop_column('session_token')
