"""appointment participants with aliases and MIDs

Revision ID: e10a00000002
Revises: e10a00000001
Create Date: 2026-11-29 21:20:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = 'e10a00000002'
down_revision = 'e10a00000001'
branch_labels = None
depends_on = None

SCHEMA = 'therapist_service'


def upgrade():
    op.create_table('participants',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('first_name', sa.String(length=200), nullable=True),
    sa.Column('last_name', sa.String(length=200), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('phone', sa.String(length=100), nullable=True),
    sa.Column('mid', sa.String(length=200), nullable=True),
    sa.Column('username', sa.String(length=200), nullable=True),
    sa.Column('attendance_status', sa.String(length=100), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('batch_id', sa.String(length=200), nullable=True),
    sa.Column('source', sa.String(length=200), nullable=True),
    sa.Column('match_first_name', sa.Text(), nullable=True),
    sa.Column('match_last_name', sa.Text(), nullable=True),
    sa.Column('match_email', sa.Text(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    schema=SCHEMA
    )
    # The identity rule and the one-MID rule live here, so racing requests cannot break them.
    op.create_index('uq_participants_identity', 'participants', ['match_email', 'match_first_name', 'match_last_name'],
                    unique=True, schema=SCHEMA)
    op.create_index('uq_participants_mid', 'participants', ['mid'], unique=True, schema=SCHEMA)
    op.create_index('ix_participants_email', 'participants', ['email'], unique=False, schema=SCHEMA)
    op.create_index('ix_participants_event_id', 'participants', [sa.text("(metadata ->> 'eventId')")], unique=False,
                    schema=SCHEMA)
    op.create_table('participant_aliases',
    sa.Column('alias', sa.String(length=200), nullable=False),
    sa.Column('participant_id', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['participant_id'], [f'{SCHEMA}.participants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('alias'),
    schema=SCHEMA
    )
    op.create_index('ix_participant_aliases_participant_id', 'participant_aliases', ['participant_id'], unique=False,
                    schema=SCHEMA)
    op.create_table('participant_versions',
    sa.Column('record_id', sa.String(length=200), nullable=False),
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['record_id'], [f'{SCHEMA}.participants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    schema=SCHEMA
    )
    op.create_index('uq_participant_versions_record_version', 'participant_versions', ['record_id', 'version'],
                    unique=True, schema=SCHEMA)


def downgrade():
    op.drop_table('participant_versions', schema=SCHEMA)
    op.drop_table('participant_aliases', schema=SCHEMA)
    op.drop_table('participants', schema=SCHEMA)
