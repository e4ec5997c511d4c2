"""appointments from practice calendars, with versions and the no-overlap exclusion constraint

Revision ID: e10a00000001
Revises: d3e46a9e3e29
Create Date: 2026-11-29 21:20:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = 'e10a00000001'
down_revision = 'd3e46a9e3e29'
branch_labels = None
depends_on = None

SCHEMA = 'therapist_service'


def upgrade():
    # `org_id WITH =` in a GiST index needs btree_gist (shipped with PostgreSQL's contrib, and with
    # the embedded server; a trusted extension, so the database owner may create it).
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    op.create_table('appointments',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('org_id', sa.String(length=100), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=False),
    sa.Column('start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload_created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('payload_updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    postgresql.ExcludeConstraint(('org_id', '='), (sa.text("tstzrange(start, \"end\", '[)')"), '&&'),
                                 name='ex_appointments_no_overlap', using='gist',
                                 where=sa.text('deleted_at IS NULL')),
    schema=SCHEMA
    )
    op.create_index('uq_appointments_org_external_id', 'appointments', ['org_id', 'external_id'], unique=True,
                    schema=SCHEMA)
    op.create_index('ix_appointments_org_start', 'appointments', ['org_id', 'start'], unique=False, schema=SCHEMA)
    op.create_table('appointment_versions',
    sa.Column('record_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('data', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['record_id'], [f'{SCHEMA}.appointments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    schema=SCHEMA
    )
    op.create_index('uq_appointment_versions_record_version', 'appointment_versions', ['record_id', 'version'],
                    unique=True, schema=SCHEMA)


def downgrade():
    # btree_gist stays: it is database-wide, and other schemas may use it.
    op.drop_index('uq_appointment_versions_record_version', table_name='appointment_versions', schema=SCHEMA)
    op.drop_table('appointment_versions', schema=SCHEMA)
    op.drop_index('ix_appointments_org_start', table_name='appointments', schema=SCHEMA)
    op.drop_index('uq_appointments_org_external_id', table_name='appointments', schema=SCHEMA)
    op.drop_table('appointments', schema=SCHEMA)
