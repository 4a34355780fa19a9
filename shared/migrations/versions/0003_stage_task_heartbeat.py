"""stage task heartbeat: workers stamp the StageTask they run every few seconds, so the sweep can
tell a dead worker from a slow one

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('stagetask', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('stagetask', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
