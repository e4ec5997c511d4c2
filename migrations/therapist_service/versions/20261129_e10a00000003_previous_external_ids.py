"""therapists keep their previous external ids

Revision ID: e10a00000003
Revises: e10a00000002
Create Date: 2026-11-29 21:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'e10a00000003'
down_revision = 'e10a00000002'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
