"""exchange route 'known': a training pair's answer the model picked

Revision ID: c3a1d7e5f902
Revises: b920c99c8ad7
Create Date: 2026-11-25 16:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c3a1d7e5f902'
down_revision = 'b920c99c8ad7'
branch_labels = None
depends_on = None

ROUTES = ('model', 'memory', 'fallback', 'import')
CONSTRAINT = 'exchange_route'  # the CHECK of the non-native enum


def _allow(routes):
    listed = ", ".join(f"'{r}'" for r in routes)
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.drop_constraint(CONSTRAINT, type_='check')
        batch_op.create_check_constraint(CONSTRAINT, sa.text(f"route IN ({listed})"))


def upgrade():
    # 'known' is no longer than 'fallback', so the VARCHAR(8) column stays.
    _allow(ROUTES + ('known',))


def downgrade():
    # Such rows were answered by the model: they go back to 'model'.
    op.execute("UPDATE exchange SET route = 'model' WHERE route = 'known'")
    _allow(ROUTES)
