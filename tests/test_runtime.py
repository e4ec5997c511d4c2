"""Which processes start the background importer (`shared.runtime.should_start_importer`)."""
from __future__ import annotations

import pytest

from shared.runtime import flask_cli_command, should_start_importer

FLASK = "/work/main/.venv/bin/flask"
GUNICORN = "/work/main/.venv/bin/gunicorn"


def decide(argv, environ=None, enabled=True):
    return should_start_importer(enabled, argv=argv, environ=environ or {})


def test_imports_disabled_never_starts_the_importer():
    start, reason = decide([GUNICORN, "patient_service.app:create_app()"], enabled=False)

    assert start is False
    assert "IMPORTS_ENABLED" in reason


@pytest.mark.parametrize("argv", [
    [FLASK, "--app", "patient_service", "db", "upgrade"],
    [FLASK, "-A", "therapist_service", "db", "downgrade"],
    [FLASK, "--app", "patient_service", "imports", "run-once"],
    [FLASK, "--app", "patient_service", "openapi", "write", "spec.json"],
    ["/usr/lib/python3.11/site-packages/flask/__main__.py", "--app", "patient_service", "db", "upgrade"],
])
def test_flask_maintenance_commands_do_not_start_the_importer(argv):
    start, reason = decide(argv)

    assert start is False
    assert "maintenance" in reason


def test_flask_run_with_debug_reloader_does_not_start_in_the_watcher_process():
    start, reason = decide([FLASK, "--app", "patient_service", "run", "--debug"])

    assert start is False
    assert "reloader" in reason


def test_flask_run_with_debug_reloader_starts_in_the_serving_child():
    start, _ = decide([FLASK, "--app", "patient_service", "run", "--debug"], {"WERKZEUG_RUN_MAIN": "true"})

    assert start is True


@pytest.mark.parametrize("argv, environ", [
    ([FLASK, "--app", "patient_service", "run", "--reload"], {}),
    ([FLASK, "--app", "patient_service", "run"], {"FLASK_DEBUG": "1"}),
])
def test_other_ways_of_turning_on_the_reloader_are_recognised(argv, environ):
    assert decide(argv, environ)[0] is False
    assert decide(argv, {**environ, "WERKZEUG_RUN_MAIN": "true"})[0] is True


@pytest.mark.parametrize("argv", [
    [FLASK, "--app", "patient_service", "run"],
    [FLASK, "--app", "patient_service", "run", "--debug", "--no-reload"],
])
def test_flask_run_without_reloader_starts_the_importer(argv):
    assert decide(argv)[0] is True


@pytest.mark.parametrize("argv", [
    [GUNICORN, "patient_service.app:create_app()"],
    [GUNICORN, "-w", "4", "-b", "0.0.0.0:5002", "therapist_service.app:create_app()"],
    ["python", "-m", "shared.devserver"],
])
def test_servers_other_than_flask_cli_start_the_importer(argv):
    start, reason = decide(argv)

    assert start is True
    assert reason == "enabled"


@pytest.mark.parametrize("argv, command", [
    ([FLASK, "--app", "patient_service", "db", "upgrade"], "db"),
    ([FLASK, "-e", ".env", "run", "--port", "5001"], "run"),
    ([FLASK, "--debug", "imports", "run-once"], "imports"),
    ([GUNICORN, "app:create_app()"], None),
    ([FLASK], None),
])
def test_flask_cli_command_is_the_first_non_option_argument(argv, command):
    assert flask_cli_command(argv) == command
