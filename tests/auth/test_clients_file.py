"""Service clients of `AUTH_CLIENTS_FILE` (SPEC §11): hashed tokens, scopes, expiry; an edited file
in force without a restart, a malformed edit keeping the last good one (logged and counted),
rotation under load with nothing refused that should pass, and `flask auth add-client`."""
from __future__ import annotations

import threading
import time

import pytest
from helpers import wait_until
from prometheus_client import REGISTRY

from shared.config import ConfigError

from .support import client_entry, token_of, write_clients

RELOAD_WINDOW = 5.0  # SPEC §11: an edit is in force within 5 seconds


def reload_errors() -> float:
    return REGISTRY.get_sample_value("curavani_auth_clients_reload_errors_total",
                                     {"service": "therapist_service"}) or 0.0


def status(http, token: str, path: str = "/api/imports") -> int:
    return http.get(path, headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.parametrize("text, place", [
    ("[clients.a\ntoken_sha256 = 'x'\n", "not valid TOML"),
    (client_entry("a", token_of("a"), ["imports:read", "imports:fly"]), "[clients.a]: unknown scope 'imports:fly'"),
    ('[clients.a]\ntoken_sha256 = "abc"\nscopes = ["imports:read"]\n', "[clients.a]: token_sha256"),
    (client_entry("a", token_of("a"), ["imports:read"]) + 'colour = "red"\n', "unknown key 'colour'"),
    (client_entry("a", token_of("a"), []), "[clients.a]: scopes must be a non-empty list"),
    (client_entry("a", token_of("a"), ["imports:read"]) + client_entry("b", token_of("a"), ["imports:read"]),
     "[clients.b]: token_sha256 is another client's too"),
])
def test_a_malformed_file_stops_the_service_at_start_with_one_line_naming_the_place(
        make_app, tmp_path, text, place):
    path = tmp_path / "clients.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        make_app("therapist", API_TOKENS={}, AUTH_CLIENTS_FILE=str(path))
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"AUTH_CLIENTS_FILE {path}") and place in message
    assert token_of("a") not in message


def test_a_service_needs_a_credential_setting(make_app):
    with pytest.raises(ConfigError, match="a credential setting is required"):
        make_app("therapist", API_TOKENS={})


def test_tokens_are_stored_hashed_and_grant_their_scopes_only(client_app, clients):
    assert clients.tokens["only-imports-read"] not in clients.path.read_text()
    http = client_app("therapist").test_client()
    assert status(http, clients.tokens["only-imports-read"]) == 200
    assert status(http, clients.tokens["only-imports-read"], "/api/therapists") == 403


def test_an_expired_client_is_refused_as_an_invalid_token(make_app, tmp_path, caplog):
    path = tmp_path / "clients.toml"
    path.write_text(client_entry("old", token_of("old"), ["imports:read"], expires="2020-01-01")
                    + client_entry("new", token_of("new"), ["imports:read"], expires="2999-01-01"))
    http = make_app("therapist", API_TOKENS={}, AUTH_CLIENTS_FILE=str(path)).test_client()
    response = http.get("/api/imports", headers={"Authorization": f"Bearer {token_of('old')}"})
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert "expired" in response.get_json()["detail"]
    assert any("access denied (expired)" in r.getMessage() and "by old" in r.getMessage() for r in caplog.records)
    assert status(http, token_of("new")) == 200


def test_an_edit_is_in_force_without_a_restart_and_a_malformed_edit_keeps_the_last_good_file(
        make_app, tmp_path, caplog):
    path = tmp_path / "clients.toml"
    first = client_entry("first", token_of("first"), ["imports:read"])
    path.write_text(first)
    http = make_app("therapist", API_TOKENS={}, AUTH_CLIENTS_FILE=str(path)).test_client()
    assert status(http, token_of("second")) == 401

    path.write_text(first + client_entry("second", token_of("second"), ["imports:read"]))
    wait_until(lambda: status(http, token_of("second")) == 200, timeout=RELOAD_WINDOW, what="the new client")

    errors_before = reload_errors()
    path.write_text(first + "[clients.broken\n")
    # the file is looked at by requests: each of these may be the one that notices the edit
    wait_until(lambda: status(http, token_of("first")) == 200 and reload_errors() > errors_before,
               timeout=RELOAD_WINDOW, what="the malformed edit noticed")
    assert status(http, token_of("first")) == status(http, token_of("second")) == 200
    logged = [r for r in caplog.records if r.levelname == "ERROR" and "AUTH_CLIENTS_FILE not reloaded" in r.getMessage()]
    assert logged and str(path) in logged[0].getMessage()

    path.write_text(client_entry("second", token_of("second"), ["imports:read"]))
    wait_until(lambda: status(http, token_of("first")) == 401, timeout=RELOAD_WINDOW, what="the removed client refused")
    assert status(http, token_of("second")) == 200


def test_a_file_that_does_not_exist_yet_holds_no_clients_until_it_is_created(make_app, tmp_path):
    path = tmp_path / "clients.toml"
    http = make_app("therapist", API_TOKENS={}, AUTH_CLIENTS_FILE=str(path)).test_client()
    assert status(http, token_of("late")) == 401
    path.write_text(client_entry("late", token_of("late"), ["imports:read"]))
    wait_until(lambda: status(http, token_of("late")) == 200, timeout=RELOAD_WINDOW, what="the created file")


def test_rotation_under_load_refuses_nothing_that_should_pass(make_app, tmp_path):
    """Callers use the old token while the file gains the new client, takes a malformed edit, and
    loses the old client: every request before that last edit must pass; the new token passes
    once it is in the file, and the old one is refused within the window after its removal."""
    clients = {"old": ({"imports:read"}, None)}
    path = tmp_path / "clients.toml"
    write_clients(path, clients)
    app = make_app("therapist", API_TOKENS={}, AUTH_CLIENTS_FILE=str(path))
    results: list[tuple[float, str, int]] = []
    stop = threading.Event()
    removed_at: list[float] = []

    def caller(name: str) -> None:
        http = app.test_client()
        while not stop.is_set():
            sent = time.monotonic()
            results.append((sent, name, status(http, token_of(name))))

    threads = [threading.Thread(target=caller, args=("old",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        write_clients(path, {**clients, "new": ({"imports:read"}, None)})
        http = app.test_client()
        wait_until(lambda: status(http, token_of("new")) == 200, timeout=RELOAD_WINDOW, what="the new client")
        path.write_text(path.read_text() + "[clients.half-written\n")
        time.sleep(1.5)  # longer than the file is looked at: the malformed edit is seen, and ignored
        assert status(http, token_of("new")) == 200
        removed_at.append(time.monotonic())
        write_clients(path, {"new": ({"imports:read"}, None)})
        wait_until(lambda: status(http, token_of("old")) == 401, timeout=RELOAD_WINDOW, what="the old client refused")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    before_removal = [code for sent, _name, code in results if sent < removed_at[0]]
    assert len(before_removal) > 50
    assert set(before_removal) == {200}


def test_add_client_makes_a_token_prints_it_once_and_stores_only_its_hash(make_app, tmp_path):
    path = tmp_path / "clients.toml"
    path.write_text(client_entry("existing", token_of("existing"), ["imports:read"]))
    app = make_app("therapist", API_TOKENS={}, AUTH_CLIENTS_FILE=str(path))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["auth", "add-client", "calendar-praxis-67", "--scope", "appointments:read",
                                 "--scope", "appointments:write", "--org", "praxis-67", "--expires", "2999-06-30"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    text = path.read_text()
    assert token not in text and 'org = "praxis-67"' in text and "expires = 2999-06-30" in text
    assert "[clients.existing]" in text  # the rest of the file is kept
    http = app.test_client()
    wait_until(lambda: status(http, token, "/api/appointments") == 200, timeout=RELOAD_WINDOW, what="the new client")
    assert status(http, token, "/api/imports") == 403

    again = runner.invoke(args=["auth", "add-client", "calendar-praxis-67", "--scope", "appointments:read"])
    assert again.exit_code != 0 and "exists already" in again.output
    unknown = runner.invoke(args=["auth", "add-client", "x", "--scope", "appointments:fly"])
    assert unknown.exit_code != 0 and "unknown scope 'appointments:fly'" in unknown.output
    assert path.read_text() == text
