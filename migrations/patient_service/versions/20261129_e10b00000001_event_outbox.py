"""the transactional outbox of domain events

Revision ID: e10b00000001
Revises: 8a694d00fa09
Create Date: 2026-11-29 21:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'e10b00000001'
down_revision = '8a694d00fa09'
branch_labels = None
depends_on = None


SCHEMA = 'patient_service'


def upgrade():
    op.create_table('event_outbox',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('aggregate', sa.String(length=20), nullable=False),
    sa.Column('record_id', sa.String(length=200), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=80), nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    schema=SCHEMA
    )
    op.create_index('ix_event_outbox_pending', 'event_outbox', ['id'], unique=False, schema=SCHEMA,
                    postgresql_where=sa.text('published_at IS NULL'))
    op.create_index('ix_event_outbox_published_at', 'event_outbox', ['published_at'], unique=False, schema=SCHEMA)
    op.create_table('event_relay_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('holder', sa.Text(), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('broker_down_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    schema=SCHEMA
    )


def downgrade():
    op.drop_table('event_relay_state', schema=SCHEMA)
    op.drop_index('ix_event_outbox_published_at', table_name='event_outbox', schema=SCHEMA)
    op.drop_index('ix_event_outbox_pending', table_name='event_outbox', schema=SCHEMA,
                  postgresql_where=sa.text('published_at IS NULL'))
    op.drop_table('event_outbox', schema=SCHEMA)
