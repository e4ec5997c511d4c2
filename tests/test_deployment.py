"""The deployment files, checked without Docker (it does not run here): docker-compose.yml
parses and is wired as SPEC §3 and §7.4 need, and the image starts the services with the
gunicorn command that tests/ops/test_gunicorn.py runs for real."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from ops.support import image_command

from shared.config import Settings

OUR_SERVICES = ("patient_service", "therapist_service")
# Variables our containers may set that shared.config.Settings does not read: gunicorn.conf.py's
# own and the Google client's. Each must be documented (the README's configuration table, or the
# runbook's *Running under gunicorn*, docs/operations.md) and read by our code.
EXTRAS = {"SERVICE_APP", "PROMETHEUS_MULTIPROC_DIR", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def runs_our_image(service: dict) -> bool:
    return "build" in service


def test_compose_has_the_database_both_services_migrations_gcs_and_a_mail_catcher(compose):
    services = compose["services"]
    assert {"db", "migrate", *OUR_SERVICES, "gcs", "mailpit"} <= services.keys()
    assert services["db"]["image"].startswith("postgres:16")
    assert services["gcs"]["image"].startswith("fsouza/fake-gcs-server:")
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")
    assert "8025:8025" in services["mailpit"]["ports"]
    # One image for both services and the migrations.
    images = {services[name]["image"] for name in (*OUR_SERVICES, "migrate")}
    assert len(images) == 1
    assert {services[name]["build"] for name in (*OUR_SERVICES, "migrate")} == {"."}


def test_every_variable_our_containers_set_is_one_the_services_read(compose):
    settings = set(Settings.model_fields)
    documented = (ROOT / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text()
    code = (ROOT / "gunicorn.conf.py").read_text() + "".join(
        path.read_text() for path in (ROOT / "shared").rglob("*.py"))
    for name, service in compose["services"].items():
        if not runs_our_image(service):
            continue
        for variable in environment(service):
            assert variable in settings or variable in EXTRAS, f"{name} sets {variable}, which nothing reads"
            if variable in EXTRAS:
                assert f"`{variable}`" in documented, f"{variable} is not documented in the README or docs/operations.md"
                assert variable in code or variable.startswith(("STORAGE_", "GOOGLE_")), variable


def test_services_are_wired_with_the_spec_variables(compose):
    patients = environment(compose["services"]["patient_service"])
    therapists = environment(compose["services"]["therapist_service"])
    for env in (patients, therapists):
        assert env["DATABASE_URL"].startswith("postgresql://") and "@db:5432/" in env["DATABASE_URL"]
        assert env["API_TOKENS"] == "${API_TOKENS:-}"  # no token is baked into the file
        assert env["DASHBOARD_SECRET_KEY"].startswith("${DASHBOARD_SECRET_KEY:?")  # nor a key
        clients_folder = env["AUTH_CLIENTS_FILE"].rsplit("/", 1)[0]
        assert any(volume.split(":")[1] == clients_folder for volume in compose["services"]["migrate"]["volumes"])
        assert env["SMTP_HOST"] == "mailpit"
        assert env["LOG_FORMAT"] == "json"
    assert patients["SERVICE_APP"] == "patient_service.app:create_app()"
    assert therapists["SERVICE_APP"] == "therapist_service.app:create_app()"
    assert patients["PATIENT_IMPORT_SOURCE"] == "gs://registrations/incoming"
    assert re.fullmatch(r"http://gcs:\d+", patients["STORAGE_EMULATOR_HOST"])
    backup = patients["PATIENT_IMPORT_BACKUP_DIR"]
    assert any(volume.endswith(f":{backup}") for volume in compose["services"]["patient_service"]["volumes"])
    assert backup.split("/")[-1] in (ROOT / "Dockerfile").read_text()  # created, owned by the service's user
    assert therapists["THERAPIST_IMPORT_POLLING"] == "true"
    inbox = therapists["THERAPIST_IMPORT_DIR"]
    assert any(volume.startswith("./") and volume.split(":")[1] == inbox
               for volume in compose["services"]["therapist_service"]["volumes"])
    assert (ROOT / "deploy" / "gcs-seed" / "registrations").is_dir()  # the emulator's bucket


def test_migrations_run_once_before_either_service_starts(compose):
    services = compose["services"]
    migrate = services["migrate"]
    command = " ".join(migrate["command"]) if isinstance(migrate["command"], list) else migrate["command"]
    assert "flask --app patient_service db upgrade" in command
    assert "flask --app therapist_service db upgrade" in command
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert migrate.get("restart") == "no"
    for name in OUR_SERVICES:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy"


def test_health_checks_and_restart_policies(compose):
    services = compose["services"]
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    for name in OUR_SERVICES:
        check = " ".join(services[name]["healthcheck"]["test"])
        assert "/ready" in check, name
    for name, service in services.items():
        if name != "migrate":
            assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_the_image_starts_gunicorn_with_gunicorn_conf_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "ENTRYPOINT" not in dockerfile  # CMD alone is the start command
    assert image_command() == ["gunicorn", "-c", "gunicorn.conf.py"]
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "pyproject.toml" in dockerfile  # dependencies as pinned there
    for folder in ("shared", "patient_service", "therapist_service", "migrations", "gunicorn.conf.py"):
        assert re.search(rf"^COPY {re.escape(folder)} ", dockerfile, re.M), folder
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)


def test_docker_files_name_only_paths_that_exist():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / source).exists(), source
    assert Path(ROOT / "gunicorn.conf.py").is_file()
