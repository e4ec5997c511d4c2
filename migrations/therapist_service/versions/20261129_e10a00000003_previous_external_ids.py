"""therapists keep their previous external ids

Revision ID: e10a00000003
Revises: e10a00000002
Create Date: 2026-11-29 21:20:00
"""
import json
import unicodedata

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = 'e10a00000003'
down_revision = 'e10a00000002'
branch_labels = None
depends_on = None

SCHEMA = 'therapist_service'


def _fold(value):
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value.strip()).casefold())


def _practice_identity(basic_info, location):
    # A frozen copy of therapist_service.services.practice_identity as of this revision.
    parts = [(basic_info or {}).get("first_name"), (basic_info or {}).get("last_name"),
             (location or {}).get("postcode"), (location or {}).get("street"), (location or {}).get("house_number")]
    if not all(isinstance(part, str) and part.strip() for part in parts):
        return None
    return json.dumps([_fold(part) for part in parts], ensure_ascii=False)


def upgrade():
    op.add_column('therapists', sa.Column('previous_external_ids', postgresql.ARRAY(sa.Text()),
                                          server_default=sa.text("'{}'::text[]"), nullable=False), schema=SCHEMA)
    op.add_column('therapists', sa.Column('practice_identity', sa.Text(), nullable=True), schema=SCHEMA)
    # Case folding is Python's, not SQL lower(): the stored therapists' identities are computed here.
    connection = op.get_bind()
    rows = connection.execute(sa.text(f"SELECT id, basic_info, location FROM {SCHEMA}.therapists")).fetchall()
    identities = [{"id": id_, "identity": _practice_identity(basic_info, location)}
                  for id_, basic_info, location in rows]
    identities = [row for row in identities if row["identity"] is not None]
    if identities:
        connection.execute(sa.text(f"UPDATE {SCHEMA}.therapists SET practice_identity = :identity WHERE id = :id"),
                           identities)
    op.create_index('ix_therapists_previous_external_ids', 'therapists', ['previous_external_ids'], unique=False,
                    schema=SCHEMA, postgresql_using='gin')
    op.create_index('ix_therapists_practice_identity', 'therapists', ['practice_identity'], unique=False,
                    schema=SCHEMA)


def downgrade():
    op.drop_index('ix_therapists_practice_identity', table_name='therapists', schema=SCHEMA)
    op.drop_index('ix_therapists_previous_external_ids', table_name='therapists', schema=SCHEMA,
                  postgresql_using='gin')
    op.drop_column('therapists', 'practice_identity', schema=SCHEMA)
    op.drop_column('therapists', 'previous_external_ids', schema=SCHEMA)
