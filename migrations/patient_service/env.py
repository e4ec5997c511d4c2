"""Alembic entry point for this service; the environment itself is shared."""
from shared.migrations_env import run_migrations

run_migrations()
