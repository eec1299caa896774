"""The read time limit (issue 22, CONTRACT 4.7): a list or count that reads
longer than INSTANCES_QUERY_TIMEOUT is stopped and answered 503 with the
problem type .../query-timeout and no Retry-After; the server serves on, and
writes are never limited."""
import pytest

import models
from app import create_app
from conftest import SITE, USER, assert_problem, database_for

ROWS = 20_000
# One letter: no trigram to look up, so every name is read and tested.
SLOW = "q=x"
ROW = {"site_id": SITE, "user_id": USER, "instance_type": "browser", "status": "pending",
       "agent_id": None, "configuration": {}, "environment_variables": {}, "labels": {}}


def seeded_app(tmp_path, timeout):
    app = create_app({"TESTING": True, "QUERY_TIMEOUT": timeout,
                      **database_for(tmp_path / "slow.db")})
    with app.app_context():
        for start in range(0, ROWS, 1000):
            models.Instance.add([{**ROW, "name": f"box-{number}"}
                                 for number in range(start, start + 1000)])
        models.db.release()
    return app


@pytest.fixture
def slow_app(tmp_path, monkeypatch):
    for name in ("INSTANCES_QUERY_TIMEOUT", "INSTANCES_DATABASE_URL", "INSTANCES_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    app = seeded_app(tmp_path, 0.001)
    yield app
    models.db.close_all()


def assert_query_timeout(resp):
    body = assert_problem(resp, 503)
    assert body["type"].endswith("/query-timeout"), body
    assert "Retry-After" not in resp.headers
    for advice in ("filter", "offset", "after"):
        assert advice in body["detail"], body
    return body


def test_a_read_past_the_limit_is_503_query_timeout_and_the_server_serves_on(slow_app):
    client = slow_app.test_client()
    made = client.post("/api/instances", json={"site_id": SITE, "user_id": USER, "name": "me"})
    assert made.status_code == 201

    assert_query_timeout(client.get(f"/api/instances?{SLOW}"))
    assert_query_timeout(client.get(f"/api/instances/counts?{SLOW}&by=status"))
    assert_query_timeout(client.get(f"/api/instances?{SLOW}&sort=name&offset=10000"))

    # The same thread's connection serves on: a read by id, and writes,
    # which are not limited, a batch of 1,000 logs included.
    assert client.get(f"/api/instances/{made.get_json()['id']}").status_code == 200
    logs = client.post(f"/api/instances/{made.get_json()['id']}/logs",
                       json=[{"log_type": "system", "message": f"line {number}"}
                             for number in range(1000)])
    assert logs.status_code == 201
    assert len(logs.get_json()) == 1000
    # Without the limit, the same read is answered: nothing of the limit was
    # left on the connection (SQLite's handler, PostgreSQL's session setting).
    slow_app.config["QUERY_TIMEOUT"] = 0
    resp = client.get(f"/api/instances?{SLOW}&limit=1")
    assert resp.status_code == 200
    assert resp.headers["X-Total-Count"] == str(ROWS)


def test_a_read_within_the_limit_is_answered(tmp_path, monkeypatch):
    monkeypatch.delenv("INSTANCES_QUERY_TIMEOUT", raising=False)
    app = seeded_app(tmp_path, 30.0)
    try:
        resp = app.test_client().get(f"/api/instances?{SLOW}&limit=5")
        assert resp.status_code == 200
        assert resp.headers["X-Total-Count"] == str(ROWS)
    finally:
        models.db.close_all()


def test_the_setting_defaults_to_2_seconds_and_0_turns_it_off(app, tmp_path, monkeypatch):
    assert app.config["QUERY_TIMEOUT"] == 2.0
    for value in ("abc", "-1", "nan", "inf"):
        monkeypatch.setenv("INSTANCES_QUERY_TIMEOUT", value)
        with pytest.raises(ValueError, match="INSTANCES_QUERY_TIMEOUT"):
            create_app({"TESTING": True, **database_for(tmp_path / "bad.db")})
    monkeypatch.setenv("INSTANCES_QUERY_TIMEOUT", "0")
    models.db.close_all()
    off = create_app({"TESTING": True, **database_for(tmp_path / "off.db")})
    assert off.config["QUERY_TIMEOUT"] == 0
