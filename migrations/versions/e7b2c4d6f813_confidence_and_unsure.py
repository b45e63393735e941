"""exchange confidence, and the route 'unsure' for replies below the threshold

Revision ID: e7b2c4d6f813
Revises: d4e8f1a2b3c5
Create Date: 2026-11-27 20:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e7b2c4d6f813'
down_revision = 'd4e8f1a2b3c5'
branch_labels = None
depends_on = None

ROUTES = ('model', 'memory', 'fallback', 'import', 'known')
CONSTRAINT = 'exchange_route'  # the CHECK of the non-native enum


def _allow(batch_op, routes):
    listed = ", ".join(f"'{r}'" for r in routes)
    batch_op.drop_constraint(CONSTRAINT, type_='check')
    batch_op.create_check_constraint(CONSTRAINT, sa.text(f"route IN ({listed})"))


def upgrade():
    # 'unsure' is no longer than 'fallback', so the VARCHAR(8) column stays.
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        _allow(batch_op, ROUTES + ('unsure',))
        batch_op.add_column(sa.Column('confidence', sa.Float(), nullable=True))
        batch_op.create_index('ix_exchange_confidence', ['confidence'], unique=False)


def downgrade():
    # An unsure reply was the model's, held back: it goes back to 'model'.
    op.execute("UPDATE exchange SET route = 'model' WHERE route = 'unsure'")
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.drop_index('ix_exchange_confidence')
        batch_op.drop_column('confidence')
        _allow(batch_op, ROUTES)
