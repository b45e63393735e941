"""exchange channel (web, widget, api, kakao) and REST API keys

Revision ID: f1c5a9e3d207
Revises: e7b2c4d6f813
Create Date: 2026-11-27 22:45:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f1c5a9e3d207'
down_revision = 'e7b2c4d6f813'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'api_key',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=80), nullable=False),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('key_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('created_by', sa.String(length=80), nullable=True),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.Column('last_used_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key_hash'),
    )
    # Every row so far came from the chat page: the server default fills them.
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'channel', sa.Enum('web', 'widget', 'api', 'kakao', name='exchange_channel', native_enum=False,
                               create_constraint=True),
            nullable=False, server_default='web'))
        batch_op.add_column(sa.Column('api_key_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_exchange_channel', ['channel'], unique=False)
        batch_op.create_index('ix_exchange_api_key_id', ['api_key_id'], unique=False)
        batch_op.create_foreign_key('fk_exchange_api_key_id', 'api_key', ['api_key_id'], ['id'])


def downgrade():
    with op.batch_alter_table('exchange', schema=None) as batch_op:
        batch_op.drop_constraint('fk_exchange_api_key_id', type_='foreignkey')
        batch_op.drop_index('ix_exchange_api_key_id')
        batch_op.drop_index('ix_exchange_channel')
        batch_op.drop_constraint('exchange_channel', type_='check')  # the non-native enum's CHECK
        batch_op.drop_column('api_key_id')
        batch_op.drop_column('channel')
    op.drop_table('api_key')
