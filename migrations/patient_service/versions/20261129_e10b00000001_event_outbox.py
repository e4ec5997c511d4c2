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


def upgrade():
    pass


def downgrade():
    pass
