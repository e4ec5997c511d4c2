"""erasure records and the patient access log

Revision ID: e10b00000002
Revises: e10b00000001
Create Date: 2026-11-29 21:20:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = 'e10b00000002'
down_revision = 'e10b00000001'
branch_labels = None
depends_on = None


SCHEMA = 'patient_service'


def upgrade():
    op.create_table('erasures',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('rows_removed', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('files_removed', sa.Integer(), nullable=False),
    sa.Column('files_pending', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('patient_id'),
    schema=SCHEMA
    )
    op.create_table('backup_deletions',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('erasure_id', sa.BigInteger(), nullable=False),
    sa.Column('file_name', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['erasure_id'], ['patient_service.erasures.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    schema=SCHEMA
    )
    op.create_index(op.f('ix_patient_service_backup_deletions_erasure_id'), 'backup_deletions', ['erasure_id'],
                    unique=False, schema=SCHEMA)
    op.create_table('access_log',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('patient_id', sa.BigInteger(), nullable=False),
    sa.Column('what', sa.String(length=20), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    schema=SCHEMA
    )
    op.create_index('ix_access_log_patient_read_at', 'access_log', ['patient_id', 'read_at'], unique=False,
                    schema=SCHEMA)
    op.create_index('ix_access_log_read_at', 'access_log', ['read_at'], unique=False, schema=SCHEMA,
                    postgresql_using='brin')


def downgrade():
    op.drop_index('ix_access_log_read_at', table_name='access_log', schema=SCHEMA)
    op.drop_index('ix_access_log_patient_read_at', table_name='access_log', schema=SCHEMA)
    op.drop_table('access_log', schema=SCHEMA)
    op.drop_index(op.f('ix_patient_service_backup_deletions_erasure_id'), table_name='backup_deletions',
                  schema=SCHEMA)
    op.drop_table('backup_deletions', schema=SCHEMA)
    op.drop_table('erasures', schema=SCHEMA)
