"""GET /api/events (CONTRACT 4.4, 4.7): an event for every change of an
instance or plan, written in the same transaction as the change, its data
as a GET answered right after it (environment values redacted), filters,
the cursor, and retention. On whichever engine the suite runs on."""
from datetime import timedelta

import pytest

from conftest import SITE, USER, assert_problem, random_id
from feeds import Event
from jobs.event_purge import EventPurge
from models import Instance
from storage.fields import utcnow
from storage.writes import write

OTHER_SITE = "0f8fad5b-d9cb-469f-a165-70867728950e"
SETTLE = "&wait=2"    # see test_fleet_logs.py: PostgreSQL's hold-back


def events(client, query="", after="p0"):
    resp = client.get(f"/api/events?after={after}&limit=1000{SETTLE}&{query}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def types(client, query=""):
    return [event["type"] for event in events(client, query)]


def redacted(body):
    return {**body, "environment_variables": {
        key: "[redacted]" for key in body["environment_variables"]}}


def test_each_change_is_one_event_whose_data_is_the_get_right_after_it(client):
    made = client.post("/api/instances", json={
        "site_id": SITE, "user_id": USER, "name": "box",
        "environment_variables": {"TOKEN": "s3cret", "HOME": "/root"}}).get_json()
    box = f"/api/instances/{made['id']}"
    assert client.patch(box, json={}).status_code == 200                     # no change
    assert client.put(box, json={"name": "box"}).status_code == 200          # the same
    running = client.patch(box, json={"status": "running"}).get_json()
    goal = client.post(f"{box}/plans", json={"title": "goal", "plan_type": "objective"}
                       ).get_json()
    task = client.post(f"{box}/plans", json={"title": "task", "plan_type": "task",
                                             "parent_id": goal["id"]}).get_json()
    done = client.patch(f"{box}/plans/{goal['id']}", json={"status": "completed"}).get_json()
    assert client.delete(f"{box}/plans/{goal['id']}").status_code == 204
    detached = client.get(f"{box}/plans/{task['id']}").get_json()
    client.post(f"{box}/logs", json={"log_type": "system", "message": "logs are no events"})

    found = events(client)
    assert [(e["type"], e["plan_id"]) for e in found] == [
        ("instance.created", None), ("instance.updated", None),
        ("plan.created", goal["id"]), ("plan.created", task["id"]),
        ("plan.updated", goal["id"]),
        # deleting the parent detaches its child (updated_at moves), then goes
        ("plan.updated", task["id"]), ("plan.deleted", goal["id"])]
    assert all(e["instance_id"] == made["id"] for e in found)
    assert [e["data"] for e in found] == [
        redacted(made), redacted(running), goal, task, done, detached, None]
    assert found[0]["data"]["environment_variables"] == {"HOME": "[redacted]",
                                                         "TOKEN": "[redacted]"}
    assert found[1]["at"] == running["updated_at"]
    one = client.get(f"/api/events/{found[2]['id']}")
    assert one.status_code == 200 and one.get_json() == found[2] and one.headers["ETag"]


def test_deleting_an_instance_is_one_event_not_one_per_plan(client, instance, make_plan):
    make_plan()
    make_plan()
    assert client.delete(f"/api/instances/{instance['id']}").status_code == 204
    assert types(client) == ["instance.created", "plan.created", "plan.created",
                             "instance.deleted"]
    deleted = events(client)[-1]
    assert deleted["data"] is None and deleted["instance_id"] == instance["id"]


def test_a_write_that_fails_leaves_no_event(client, instance):
    box = f"/api/instances/{instance['id']}"
    assert client.patch(box, json={"status": "running"},
                        headers={"If-Match": '"stale"'}).status_code == 412
    assert client.post(f"{box}/plans", json={"title": "t", "plan_type": "task",
                                             "parent_id": random_id()}).status_code == 422
    with pytest.raises(RuntimeError):
        with write():
            Instance.update(status="error", updated_at=utcnow()).where(
                Instance.id == instance["id"]).execute()
            assert Event.select().count() == 2     # written in the transaction...
            raise RuntimeError("rolled back")
    assert types(client) == ["instance.created"]   # ... and gone with it
    assert client.get(box).get_json()["status"] == "pending"


def test_an_idempotent_replay_makes_no_second_event(client):
    body = {"site_id": SITE, "user_id": USER, "name": "once"}
    for _ in range(2):
        client.post("/api/instances", json=body, headers={"Idempotency-Key": "k-1"})
    assert types(client) == ["instance.created"]


def test_filters_type_family_instance_site_and_the_labels_as_they_were(client, make_instance):
    web = make_instance(labels={"env": "prod"})
    lab = make_instance(site_id=OTHER_SITE, labels={"env": "dev"})
    client.post(f"/api/instances/{web['id']}/plans", json={"title": "t", "plan_type": "task"})
    client.patch(f"/api/instances/{web['id']}", json={"labels": {"env": "staging"}})

    assert types(client, "type=plan.*") == ["plan.created"]
    assert types(client, "type=instance.updated,plan.created") == [
        "plan.created", "instance.updated"]
    assert types(client, f"instance_id={lab['id']}") == ["instance.created"]
    assert types(client, f"site_id={OTHER_SITE}") == ["instance.created"]
    # The first two events of web had env=prod; the update has env=staging.
    assert [e["instance_id"] for e in events(client, "label=env=prod")] == [web["id"]] * 2
    assert types(client, "label=env=staging") == ["instance.updated"]
    assert types(client, "label=env!=prod") == ["instance.created", "instance.updated"]
    assert types(client, "label=!env") == []
    newest = client.get("/api/events?type=instance.*")
    assert [e["type"] for e in newest.get_json()] == ["instance.updated", "instance.created",
                                                      "instance.created"]
    assert newest.headers["X-Total-Count"] == "3"


@pytest.mark.parametrize("query, field", [
    ("sort=at", "sort"), ("type=instance", "type"), ("type=log.created", "type"),
    ("after=nope", "after"), ("wait=1", "wait"), ("instance_id=x", "instance_id"),
])
def test_bad_queries_are_422(client, query, field):
    assert_problem(client.get(f"/api/events?{query}"), 422, field, "query")


def test_an_unknown_event_is_404_and_an_unknown_cursor_id_410(client):
    assert_problem(client.get(f"/api/events/{random_id()}"), 404)
    assert_problem(client.get(f"/api/events?after={random_id()}"), 410)


def age_events(days):
    Event.update(at=utcnow() - timedelta(days=days)).execute()


def test_events_past_retention_are_purged_and_an_older_cursor_is_410(app, client, make_instance):
    for _ in range(3):
        make_instance()
    old = events(client)
    early, last = position_of(client, 1), position_of(client, 3)
    age_events(8)
    make_instance(name="recent")
    with app.app_context():
        assert EventPurge(app).run_once() == 3

    kept = events(client)
    assert [e["data"]["name"] for e in kept] == ["recent"]
    assert_problem(client.get(f"/api/events?after={old[0]['id']}"), 410)
    assert_problem(client.get(f"/api/events/{old[0]['id']}"), 404)
    from_old = client.get(f"/api/events?after={old[0]['id']}")
    assert "without after" in from_old.get_json()["detail"]
    # A position with purged events after it: 410; the last one purged
    # still works (nothing after it is gone), and so does p0.
    assert_problem(client.get(f"/api/events?after={early}"), 410)
    assert [e["data"]["name"] for e in events(client, after=last)] == ["recent"]
    assert [e["data"]["name"] for e in events(client, after="p0")] == ["recent"]
    with app.app_context():
        assert EventPurge(app).run_once() == 0


def position_of(client, rows):
    """The position after the first `rows` events kept, from a next link."""
    link = client.get(f"/api/events?after=p0&limit={rows}{SETTLE}").headers.get("Link", "")
    return link.split("after=")[1].split("&")[0].split(">")[0] if link else "p0"


def test_the_purge_keeps_what_an_active_webhook_has_still_to_deliver(app, client, make_instance):
    hook = client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/x"}).get_json()
    make_instance()
    make_instance()
    age_events(8)
    with app.app_context():
        assert EventPurge(app).run_once() == 0
    assert len(events(client)) == 2
    client.patch(f"/api/webhooks/{hook['id']}", json={"active": False})
    with app.app_context():
        assert EventPurge(app).run_once() == 2
    assert events(client) == []
