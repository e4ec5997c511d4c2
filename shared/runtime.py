"""Whether this process should start the background importer.

`IMPORTS_ENABLED` decides first. Then two processes that call `create_app()` but must not
import: a Flask CLI maintenance command (`flask db upgrade`, `flask imports run-once`, which
runs the importer in the foreground itself) and the watcher parent of the debug reloader
(only its child serves). The usual `WERKZEUG_RUN_MAIN` test alone would disable importing
under gunicorn, which never sets it. Whatever this decides, the database lock (§7.4) still
guarantees a single active importer.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

_OPTIONS_WITH_VALUE = {"--app", "-A", "--env-file", "-e"}


def flask_cli_command(argv: list[str] | None = None) -> str | None:
    """The Flask CLI subcommand this process runs (`run`, `db`, `imports` …), or None."""
    argv = sys.argv if argv is None else argv
    program = os.path.basename(argv[0]) if argv else ""
    if program != "flask" and not argv[0].endswith(os.path.join("flask", "__main__.py")):
        return None
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg in _OPTIONS_WITH_VALUE:
            skip = True
            continue
        if arg.startswith("-"):
            continue
        return arg
    return None


def should_start_importer(imports_enabled: bool, argv: list[str] | None = None,
                          environ: Mapping[str, str] | None = None) -> tuple[bool, str]:
    env: Mapping[str, str] = os.environ if environ is None else environ
    argv = sys.argv if argv is None else argv
    if not imports_enabled:
        return False, "IMPORTS_ENABLED is false"
    command = flask_cli_command(argv)
    if command is not None and command != "run":
        return False, f"flask {command} is a maintenance command"
    if command == "run":
        debug = env.get("FLASK_DEBUG", "").lower() in ("1", "true") or "--debug" in argv
        reloading = "--reload" in argv or (debug and "--no-reload" not in argv)
        if reloading and env.get("WERKZEUG_RUN_MAIN") != "true":
            return False, "this is the debug reloader's watcher process"
    return True, "enabled"
