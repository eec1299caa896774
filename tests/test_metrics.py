"""GET /metrics (CONTRACT 4.5, 4.7): exact counts summed over two worker
processes, route templates as labels, waits timed apart, counters that
outlive a worker, instance counts from the database, tokens."""
import os
import signal
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SITE, USER, call, wait_until

ONE = "/api/instances/<uuid:instance_id>"
LOGS = "/api/instances/<uuid:instance_id>/logs"


def scrape(url, headers=None):
    """{(sample name, sorted labels): value} of the server's exposition."""
    resp = call(url, "GET", "/metrics", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(resp.get_data(as_text=True))


def samples(text):
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def requests(found, route, method="GET", status="200"):
    return found.get(("instance_api_requests_total",
                      (("method", method), ("route", route), ("status", status))), 0)


def create(url, headers=None, **fields):
    resp = call(url, "POST", "/api/instances",
                {"site_id": SITE, "user_id": USER, "name": "box", **fields}, headers)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def workers(srv):
    return set(srv.pids()[1:])


def test_exact_counts_over_two_workers_and_after_workers_die(start_server):
    srv = start_server("--workers", "2")
    url = srv.url
    made = [create(url, status=status, instance_type=kind) for status, kind in
            (("running", "ubuntu"), ("running", "browser"), ("paused", "windows"))]
    for _ in range(37):
        assert call(url, "GET", f"/api/instances/{made[0]['id']}").status_code == 200
    for path in ("/nope", "/api/nope", "/api/instances/not-a-uuid", "/x/y/z", "/metricsx"):
        assert call(url, "GET", path).status_code == 404
    assert call(url, "DELETE", "/api/instances").status_code == 405

    found = scrape(url)
    assert requests(found, ONE) == 37
    assert requests(found, "/api/instances", "POST", "201") == 3
    assert requests(found, "<unmatched>", status="404") == 5
    assert requests(found, "<unmatched>", "DELETE", "405") == 1
    # Raw paths never become labels.
    assert not any("nope" in str(labels) or made[0]["id"] in str(labels)
                   for _, labels in found)
    duration = ("instance_api_request_duration_seconds_count",
                (("method", "GET"), ("route", ONE), ("status", "200")))
    assert found[duration] == 37
    # Three creates, each a committed write (group commit or not).
    assert found[("instance_api_writes_committed_total", ())] == 3
    assert found[("instance_api_write_group_size_sum", ())] == 3
    # Read from the database at scrape time, not summed per worker: the
    # API's own counts.
    counts = call(url, "GET", "/api/instances/counts?by=status").get_json()["by"]["status"]
    assert counts["running"] == 2
    for status, number in counts.items():
        assert found[("instance_api_instances", (("status", status),))] == number
    assert found[("instance_api_database_size_bytes", ())] > 0
    # Known label values are there at 0 before anything happened.
    assert found[("instance_api_lifecycle_transitions_total", (("reason", "expired"),))] == 0
    assert found[("instance_api_purged_rows_total", (("kind", "logs"),))] == 0
    assert found[("instance_api_webhook_deliveries_total", (("outcome", "given_up"),))] == 0

    # Both workers killed (one after the other, each replaced): every
    # request above was served by a process that is gone, and still counts.
    for victim in sorted(workers(srv)):
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda victim=victim: len(workers(srv)) == 2 and victim not in workers(srv),
                   what="a replacement worker")
    wait_until(lambda: call(url, "GET", "/healthz").status_code == 200, what="a serving worker")
    after = scrape(url)
    assert requests(after, ONE) == 37
    assert requests(after, "<unmatched>", status="404") == 5
    assert requests(after, "/healthz") >= 1
    assert requests(after, "/metrics") == 1   # the first scrape (this one counts after)
    assert after[duration] == 37


def test_a_held_wait_is_timed_apart_and_counted_among_waiters(start_server):
    srv = start_server("--workers", "2")
    url = srv.url
    instance = create(url)
    first = call(url, "POST", f"/api/instances/{instance['id']}/logs",
                 {"log_type": "system", "message": "one"}).get_json()
    assert call(url, "GET", f"/api/instances/{instance['id']}/logs").status_code == 200
    waiters = ("instance_api_waiters", ())
    assert scrape(url)[waiters] == 0

    answer = {}
    path = f"/api/instances/{instance['id']}/logs?after={first['id']}&wait=30"
    tail = threading.Thread(target=lambda: answer.update(resp=call(url, "GET", path)))
    tail.start()
    wait_until(lambda: scrape(url)[waiters] == 1, what="the waiter")
    assert call(url, "POST", f"/api/instances/{instance['id']}/logs",
                {"log_type": "system", "message": "two"}).status_code == 201
    tail.join(30)
    assert answer["resp"].status_code == 200
    assert [log["message"] for log in answer["resp"].get_json()] == ["two"]

    found = wait_until(lambda: (lambda found: found[waiters] == 0 and found)(scrape(url)),
                       what="the waiter gone")
    labels = (("method", "GET"), ("route", LOGS), ("status", "200"))
    assert found[("instance_api_wait_duration_seconds_count", labels)] == 1
    # The request-duration histogram has the plain list only; the count of
    # requests has both.
    assert found[("instance_api_request_duration_seconds_count", labels)] == 1
    assert requests(found, LOGS) == 2


def test_behind_tokens_when_configured(start_server):
    srv = start_server("--workers", "2", env={"INSTANCES_API_TOKENS": "scrape-token"})
    resp = call(srv.url, "GET", "/metrics")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert call(srv.url, "GET", "/healthz").status_code == 200
    create(srv.url, headers={"Authorization": "Bearer scrape-token"})
    found = scrape(srv.url, headers={"Authorization": "Bearer scrape-token"})
    assert requests(found, "/api/instances", "POST", "201") == 1
    assert requests(found, "/metrics", status="401") == 1
    assert requests(found, "/healthz") == 1


def test_an_embedded_app_serves_its_own_process(client, make_instance):
    before = samples(client.get("/metrics").get_data(as_text=True))
    made = make_instance()
    for _ in range(4):
        assert client.get(f"/api/instances/{made['id']}").status_code == 200
    resp = client.get("/metrics")
    assert resp.status_code == 200
    found = samples(resp.get_data(as_text=True))
    assert requests(found, ONE) - requests(before, ONE) == 4
    assert requests(found, "/metrics") - requests(before, "/metrics") == 1
    assert found[("instance_api_instances", (("status", "pending"),))] == 1
    assert not any(name.startswith(("process_", "python_")) for name, _ in found)


@pytest.mark.parametrize("setting", ["0", "off"])
def test_metrics_can_be_turned_off(tmp_path, monkeypatch, setting):
    from app import create_app
    from conftest import database_for
    import models

    monkeypatch.setenv("INSTANCES_METRICS", setting)
    app = create_app(database_for(tmp_path / "off.db"))
    try:
        assert app.test_client().get("/metrics").status_code == 404
    finally:
        models.db.close_all()


def test_not_in_the_openapi_document(client):
    assert "/metrics" not in client.get("/api/openapi.json").get_json()["paths"]


def test_what_the_background_jobs_report_shows_up(client):
    import metrics

    def value(name, label, value):
        found = samples(client.get("/metrics").get_data(as_text=True))
        return found[(name, ((label, value),))]

    before = (value("instance_api_lifecycle_transitions_total", "reason", "idle_timeout"),
              value("instance_api_purged_rows_total", "kind", "logs"),
              value("instance_api_webhook_deliveries_total", "outcome", "failed"))
    metrics.lifecycle_ended("idle_timeout")
    metrics.purged("logs", 1000)
    metrics.purged("logs", 0)
    metrics.delivered("failed")
    metrics.delivered("failed")
    after = (value("instance_api_lifecycle_transitions_total", "reason", "idle_timeout"),
             value("instance_api_purged_rows_total", "kind", "logs"),
             value("instance_api_webhook_deliveries_total", "outcome", "failed"))
    assert [b - a for a, b in zip(before, after)] == [1, 1000, 2]
    # Only the known label values: a typo fails loudly instead of making a series.
    with pytest.raises(KeyError):
        metrics.purged("log", 1)


def test_one_worker_serves_metrics_too(start_server):
    srv = start_server("--workers", "1")
    for _ in range(3):
        assert call(srv.url, "GET", "/healthz").status_code == 200
    assert requests(scrape(srv.url), "/healthz") == 3
