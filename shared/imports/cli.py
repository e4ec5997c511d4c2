"""`flask --app <service> imports run-once`: one pass in the foreground, the same code the
background worker runs, under the same lock."""
from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup

from shared.extensions import db
from shared.imports.locking import ImporterLock

imports_cli = AppGroup("imports", help="Run and inspect the importer.")


@imports_cli.command("run-once")
def run_once() -> None:
    """Import what is pending now and print a summary."""
    imports = current_app.extensions["imports"]
    if not imports.configured:
        click.echo(f"{imports.service}: no import source configured ({imports.spec.missing_source_hint})", err=True)
        sys.exit(2)
    lock = ImporterLock(db.engine, imports.service)
    if not lock.try_acquire():
        click.echo(f"{imports.service}: another process holds the importer lock and is importing; "
                   "nothing done here", err=True)
        sys.exit(1)
    try:
        summary = imports.run_pass(still_leader=lambda: lock.held)
        sent = imports.send_alerts()
    finally:
        lock.release()
    click.echo(f"{imports.service}: {summary}")
    if sent:
        click.echo(f"{imports.service}: {sent} alert(s) sent")
    if summary.source_error:
        sys.exit(1)
