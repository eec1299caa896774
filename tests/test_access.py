"""Access (CONTRACT 2.3, 2.4): bearer tokens on every /api request when
tokens are configured, from the setting and from a file; tokens kept out of
the logs; and the refusal to listen on the network without tokens."""
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from app import create_app
from conftest import ROOT, SITE, USER, assert_problem, call, clean_environment, close_connections

TIMEOUT = 10
VALID = {"site_id": SITE, "user_id": USER, "name": "box"}
TOKENS = "tok-one, tok-two"
ONE = {"Authorization": "Bearer tok-one"}
TWO = {"Authorization": "Bearer tok-two"}
SECRET = "s3cret-token-value"
CHALLENGE = 'Bearer realm="instance-api"'


@pytest.fixture
def build(tmp_path, monkeypatch):
    """create_app with extra settings, in an environment without INSTANCES_*
    variables; each call closes the previous app's connections first."""
    for name in [name for name in os.environ if name.startswith("INSTANCES_")]:
        monkeypatch.delenv(name)

    def build(**settings):
        close_connections()
        return create_app({"TESTING": True, "DATABASE": str(tmp_path / "t.db"), **settings})
    yield build
    close_connections()


@pytest.fixture
def guarded(build):
    """A test client of an app with the tokens tok-one and tok-two."""
    return build(API_TOKENS=TOKENS).test_client()


def assert_challenge(resp, error=None):
    """A 401 problem with a Bearer challenge, naming `error` or no error."""
    assert_problem(resp, 401)
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith(CHALLENGE), challenge
    if error is None:
        assert "error=" not in challenge, challenge
    else:
        assert f'error="{error}"' in challenge, challenge


def total(client, path="/api/instances", headers=ONE):
    resp = client.get(path, headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return int(resp.headers["X-Total-Count"])


# -- tokens configured: every /api request needs one ------------------------------

def test_a_request_without_a_token_is_401_with_a_bearer_challenge(guarded):
    resp = guarded.get("/api/instances")
    assert_challenge(resp, error=None)
    # Nothing of the API leaks into the refusal.
    assert "X-Total-Count" not in resp.headers


@pytest.mark.parametrize("authorization", [
    "Bearer wrong-token",
    "Basic dG9rLW9uZTo=",           # tok-one: as Basic credentials
    "Basic tok-one",
    "Bearer",
    "Bearer ",
    "Token tok-one",
    "tok-one",                       # the token without a scheme
    "Bearer TOK-ONE",                # tokens are case-sensitive
    "Bearer tok-one,tok-two",
    "Bearer tok-one tok-two",
])
def test_a_wrong_token_or_scheme_is_401_with_invalid_token(guarded, authorization):
    resp = guarded.get("/api/instances", headers={"Authorization": authorization})
    assert_challenge(resp, error="invalid_token")
    assert "tok-one" not in resp.get_data(as_text=True)


@pytest.mark.parametrize("sent", [
    "tok-on", "tok-", "t", "tok-one-", "tok-onee", "tok-one-extra", "xtok-one", "tok-twotok-one",
])
def test_a_prefix_or_an_extension_of_a_real_token_fails(guarded, sent):
    resp = guarded.get("/api/instances", headers={"Authorization": f"Bearer {sent}"})
    assert_challenge(resp, error="invalid_token")


def test_each_configured_token_is_accepted(guarded):
    for headers in (ONE, TWO):
        resp = guarded.get("/api/instances", headers=headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert resp.headers["X-Total-Count"] == "0"
        assert "WWW-Authenticate" not in resp.headers


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_scheme_is_case_insensitive(guarded, scheme):
    resp = guarded.get("/api/instances", headers={"Authorization": f"{scheme} tok-one"})
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_a_token_opens_every_method_of_the_api(guarded):
    resp = guarded.post("/api/instances", json=VALID, headers=TWO)
    assert resp.status_code == 201, resp.get_json()
    path = f"/api/instances/{resp.get_json()['id']}"
    assert guarded.get(path, headers=ONE).status_code == 200
    resp = guarded.patch(path, json={"name": "renamed"}, headers=ONE)
    assert resp.status_code == 200 and resp.get_json()["name"] == "renamed"
    resp = guarded.post(f"{path}/logs", json={"log_type": "system", "message": "up"},
                        headers=ONE)
    assert resp.status_code == 201, resp.get_json()
    resp = guarded.post(f"{path}/plans", json={"title": "Do it", "plan_type": "task"},
                        headers=TWO)
    assert resp.status_code == 201, resp.get_json()
    assert guarded.delete(path, headers=TWO).status_code == 204
    assert guarded.get(path, headers=ONE).status_code == 404


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, ONE])
def test_healthz_stays_open(guarded, headers):
    resp = guarded.get("/healthz", headers=headers)
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}
    assert "WWW-Authenticate" not in resp.headers


UNKNOWN = [
    ("GET", "/api"),
    ("GET", "/api/"),
    ("GET", "/api/nope"),
    ("POST", "/api/nope"),
    ("GET", f"/api/instances/{SITE}"),
    ("GET", f"/api/instances/{SITE}/nothing"),
    ("GET", f"/api/instances/{SITE}/logs/{USER}"),
    ("GET", "/api/instances/not-a-uuid"),
]


@pytest.mark.parametrize("method, path", UNKNOWN)
def test_an_unknown_api_route_is_401_without_a_token(guarded, method, path):
    assert_challenge(guarded.open(path, method=method), error=None)
    resp = guarded.open(path, method=method, headers={"Authorization": "Bearer nope"})
    assert_challenge(resp, error="invalid_token")


@pytest.mark.parametrize("method, path", UNKNOWN)
def test_an_unknown_api_route_is_404_with_a_token(guarded, method, path):
    assert_problem(guarded.open(path, method=method, headers=ONE), 404)


def test_a_method_not_allowed_is_401_without_a_token_and_405_with_one(guarded):
    # Without a token, not even the Allow header says which methods exist.
    resp = guarded.delete("/api/instances")
    assert_challenge(resp)
    assert "Allow" not in resp.headers
    resp = guarded.delete("/api/instances", headers=ONE)
    assert_problem(resp, 405)
    assert "GET" in resp.headers["Allow"]


# The docs page's shell loads without a token (3.4, tests/test_ui.py); the
# document it shows does not.
@pytest.mark.parametrize("path", ["/api/openapi.json"])
def test_the_api_document_needs_a_token(guarded, path):
    assert_challenge(guarded.get(path))
    assert_challenge(guarded.get(path, headers={"Authorization": "Bearer nope"}),
                     error="invalid_token")
    assert guarded.get(path, headers=ONE).status_code == 200


def test_writes_with_a_bad_token_change_nothing(guarded):
    made = guarded.post("/api/instances", json=VALID, headers=ONE).get_json()
    path = f"/api/instances/{made['id']}"
    bad = {"Authorization": "Bearer tok-onf"}
    log = {"log_type": "system", "message": "up"}
    plan = {"title": "Do it", "plan_type": "task"}
    for method, url, body in [
            ("POST", "/api/instances", VALID),
            ("PUT", path, {"name": "renamed"}),
            ("PATCH", path, {"status": "running"}),
            ("POST", f"{path}/logs", log),
            ("POST", f"{path}/logs", [log, log]),
            ("POST", f"{path}/plans", plan),
            ("DELETE", path, None)]:
        for headers in ({}, bad):
            resp = guarded.open(url, method=method, json=body, headers=headers)
            assert_problem(resp, 401)
    assert total(guarded) == 1
    after = guarded.get(path, headers=ONE).get_json()
    assert after == made
    assert total(guarded, f"{path}/logs") == 0
    assert total(guarded, f"{path}/plans") == 0


def test_without_tokens_configured_everything_is_open(client):
    resp = client.get("/api/instances")
    assert resp.status_code == 200 and "WWW-Authenticate" not in resp.headers
    assert client.post("/api/instances", json=VALID).status_code == 201
    assert client.get("/api/openapi.json").status_code == 200
    assert client.get("/api/docs").status_code == 200
    # A header nobody asked for is ignored, not refused.
    resp = client.get("/api/instances", headers={"Authorization": "Bearer whatever"})
    assert resp.status_code == 200 and resp.headers["X-Total-Count"] == "1"
    # Unknown routes are plain 404s, without a challenge.
    resp = client.get("/api/nope")
    assert_problem(resp, 404)
    assert "WWW-Authenticate" not in resp.headers


# -- tokens from a file ------------------------------------------------------------------

def write_tokens(tmp_path, text, name="tokens.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


TOKENS_FILE = "\n".join([
    "# tokens of the deploy robots",
    "file-tok-1",
    "",
    "   file-tok-2   ",         # blanks around a token are not part of it
    "  # an indented comment",
    "# commented-out-tok",
    "   ",
    "",
])


def test_tokens_are_read_from_a_file_skipping_comments_and_blank_lines(build, tmp_path):
    client = build(API_TOKENS_FILE=str(write_tokens(tmp_path, TOKENS_FILE))).test_client()
    assert_challenge(client.get("/api/instances"))
    for token in ("file-tok-1", "file-tok-2"):
        resp = client.get("/api/instances", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, token
    for token in ("commented-out-tok", "# commented-out-tok", "# an indented comment",
                  "# tokens of the deploy robots", "#"):
        resp = client.get("/api/instances", headers={"Authorization": f"Bearer {token}"})
        assert_challenge(resp, error="invalid_token")


def test_a_tokens_file_with_windows_line_endings_works(build, tmp_path):
    path = write_tokens(tmp_path, "# robots\r\ncrlf-tok\r\n\r\n")
    client = build(API_TOKENS_FILE=str(path)).test_client()
    resp = client.get("/api/instances", headers={"Authorization": "Bearer crlf-tok"})
    assert resp.status_code == 200


def test_tokens_from_the_setting_and_the_file_combine(build, tmp_path):
    client = build(API_TOKENS=TOKENS,
                   API_TOKENS_FILE=str(write_tokens(tmp_path, TOKENS_FILE))).test_client()
    for token in ("tok-one", "tok-two", "file-tok-1", "file-tok-2"):
        resp = client.get("/api/instances", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, token
    assert_challenge(client.get("/api/instances"))


def test_tokens_are_taken_from_the_environment(build, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCES_API_TOKENS", "env-tok")
    monkeypatch.setenv("INSTANCES_API_TOKENS_FILE", str(write_tokens(tmp_path, "file-tok\n")))
    client = build().test_client()
    assert_challenge(client.get("/api/instances"))
    for token in ("env-tok", "file-tok"):
        resp = client.get("/api/instances", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, token


def test_a_missing_tokens_file_is_a_setting_error_naming_its_variable(build, tmp_path):
    with pytest.raises(ValueError, match="INSTANCES_API_TOKENS_FILE"):
        build(API_TOKENS_FILE=str(tmp_path / "no-such-file.txt"))


def test_a_tokens_file_that_is_a_directory_is_a_setting_error(build, tmp_path):
    with pytest.raises(ValueError, match="INSTANCES_API_TOKENS_FILE"):
        build(API_TOKENS_FILE=str(tmp_path))


def test_a_tokens_file_that_is_not_utf8_is_a_setting_error_naming_its_variable(
        build, tmp_path):
    path = write_tokens(tmp_path, b"tok-\xff\n")
    with pytest.raises(ValueError, match="INSTANCES_API_TOKENS_FILE"):
        build(API_TOKENS_FILE=str(path))


# -- tokens never reach the logs ----------------------------------------------------------


def loopback(srv):
    """The server's URL on 127.0.0.1, wherever it listens."""
    return f"http://127.0.0.1:{urlsplit(srv.url).port}"


def test_tokens_never_appear_in_the_server_log(start_server):
    srv = start_server(env={"INSTANCES_API_TOKENS": SECRET})
    url = loopback(srv)
    right = {"Authorization": f"Bearer {SECRET}"}
    wrong = {"Authorization": "Bearer s3cret-token-valuX"}
    resp = call(url, "POST", "/api/instances", VALID, right)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    path = f"/api/instances/{resp.get_json()['id']}"
    assert call(url, "GET", path, headers=right).status_code == 200
    assert call(url, "GET", "/api/nope", headers=right).status_code == 404
    assert call(url, "POST", "/api/instances", {"name": " "}, right).status_code == 422
    for headers in (wrong, {"Authorization": "Basic s3cret-token-valuX"},
                    {"Authorization": "s3cret-token-valuX"}):
        resp = call(url, "GET", "/api/instances", headers=headers)
        assert_problem(resp, 401)
        assert "s3cret" not in resp.get_data(as_text=True)
    assert call(url, "POST", "/api/instances", VALID, wrong).status_code == 401
    assert srv.stop() == 0
    output = srv.output
    assert " 401 " in output and " 201 " in output, output   # the requests were logged
    assert SECRET not in output
    assert "s3cret-token-valuX" not in output
    assert "s3cret" not in output


@pytest.mark.parametrize("bad", [
    {"INSTANCES_THREADS": "many"},
    {"INSTANCES_BUSY_TIMEOUT": "-1"},
    {"INSTANCES_ALLOW_OPEN_NETWORK": "perhaps"},
    {"INSTANCES_API_TOKENS_FILE": "/no/such/tokens.txt"},
])
def test_a_bad_setting_error_does_not_echo_the_tokens(tmp_path, bad):
    env = {**clean_environment(), "INSTANCES_API_TOKENS": SECRET, **bad}
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--db", str(tmp_path / "x.db")],
        env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Cannot start" in result.stderr
    assert next(iter(bad)) in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_a_bad_tokens_setting_is_never_shown(build, monkeypatch):
    # API_TOKENS is text, so only a value no string can be made of fails;
    # its message says the setting is wrong without repeating it.
    class Unprintable:
        def __str__(self):
            raise ValueError("no text")

        def __repr__(self):
            return SECRET

    with pytest.raises(ValueError, match="INSTANCES_API_TOKENS") as raised:
        build(API_TOKENS=Unprintable())
    assert SECRET not in str(raised.value)


# -- binding: no open network without tokens, unless asked ---------------------------------

def run_server(tmp_path, *flags, env=None):
    """Run `python server.py` expecting it to exit by itself (it refuses)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0",
         "--db", str(tmp_path / "x.db"), *flags],
        env={**clean_environment(), **(env or {})}, cwd=tmp_path,
        capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "api.example.invalid"])
def test_the_server_refuses_a_non_loopback_address_without_tokens(tmp_path, host):
    result = run_server(tmp_path, "--host", host)
    assert result.returncode == 2, result.stderr
    assert "Cannot start" in result.stderr
    assert "--allow-open-network" in result.stderr
    assert "INSTANCES_API_TOKENS" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Listening on" not in result.stderr + result.stdout


def test_an_open_network_setting_that_is_off_still_refuses(tmp_path):
    result = run_server(tmp_path, "--host", "0.0.0.0", env={"INSTANCES_ALLOW_OPEN_NETWORK": "0"})
    assert result.returncode == 2, result.stderr
    assert "--allow-open-network" in result.stderr


@pytest.mark.parametrize("env", [{"INSTANCES_API_TOKENS": " , "},
                                 {"INSTANCES_API_TOKENS_FILE": "only-comments.txt"}])
def test_a_token_setting_that_holds_no_token_is_refused(tmp_path, env):
    """Fail closed: whoever set a token setting expects a protected API."""
    (tmp_path / "only-comments.txt").write_text("# rotated out\n\n")
    result = run_server(tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "Cannot start" in result.stderr and "holds no token" in result.stderr
    assert "Traceback" not in result.stderr


def test_allow_open_network_flag_starts_on_every_address(start_server):
    srv = start_server("--host", "0.0.0.0", "--allow-open-network")
    assert srv.url.startswith("http://0.0.0.0:")
    assert "Listening on http://0.0.0.0:" in srv.output
    url = loopback(srv)
    assert call(url, "GET", "/healthz").status_code == 200
    # Open on purpose: no tokens, so no token is asked for.
    assert call(url, "GET", "/api/instances").status_code == 200
    assert srv.stop(signal.SIGTERM) == 0


def test_allow_open_network_setting_starts_on_every_address(start_server):
    srv = start_server("--host", "0.0.0.0", env={"INSTANCES_ALLOW_OPEN_NETWORK": "1"})
    assert srv.url.startswith("http://0.0.0.0:")
    assert call(loopback(srv), "GET", "/healthz").status_code == 200
    assert srv.stop(signal.SIGTERM) == 0


def test_with_tokens_the_server_starts_on_every_address(start_server):
    srv = start_server("--host", "0.0.0.0", env={"INSTANCES_API_TOKENS": "tok-net"})
    assert "Listening on http://0.0.0.0:" in srv.output
    url = loopback(srv)
    assert call(url, "GET", "/healthz").status_code == 200
    assert_problem(call(url, "GET", "/api/instances"), 401)
    resp = call(url, "GET", "/api/instances", headers={"Authorization": "Bearer tok-net"})
    assert resp.status_code == 200
    assert srv.stop(signal.SIGTERM) == 0


def test_with_a_tokens_file_the_server_starts_on_every_address(start_server, tmp_path):
    path = write_tokens(tmp_path, "# net\nfile-net\n")
    srv = start_server("--host", "0.0.0.0", env={"INSTANCES_API_TOKENS_FILE": str(path)})
    url = loopback(srv)
    resp = call(url, "GET", "/api/instances", headers={"Authorization": "Bearer file-net"})
    assert resp.status_code == 200
    assert srv.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_addresses_start_without_tokens(start_server, host):
    srv = start_server("--host", host)
    assert call(loopback(srv), "GET", "/api/instances").status_code == 200
    assert srv.stop(signal.SIGTERM) == 0
