"""/api/webhooks (CONTRACT 4.4, 4.7): the CRUD, the secret shown once, the
limit, Idempotency-Key, server-set fields ignored in updates; the target
checks on the resolution step alone (no packet leaves 127.0.0.0/8: the
resolver is a function of the test); signing. Deliveries to a real
receiver: test_fleet_servers.py."""
import base64
import hashlib
import hmac
import time
from datetime import timedelta

import pytest

import metrics

from conftest import assert_problem, random_id
from webhooks import signing
from webhooks.targets import Refused, checked_address, parse_allow, permitted

HOOK = {"url": "https://hooks.example.com/x", "types": "instance.*", "label": "env=prod",
        "description": "pager"}


def test_create_shows_the_secret_once_and_reads_do_not(client):
    resp = client.post("/api/webhooks", json=HOOK)
    assert resp.status_code == 201
    made = resp.get_json()
    assert made["secret"].startswith("whsec_")
    assert 24 <= len(base64.b64decode(made["secret"][6:])) <= 32
    assert resp.headers["Location"].endswith(f"/api/webhooks/{made['id']}")
    assert {k: made[k] for k in HOOK} == HOOK and made["active"] is True
    assert (made["pending"], made["failed"], made["last_error"]) == (0, 0, None)
    one = client.get(f"/api/webhooks/{made['id']}")
    assert "secret" not in one.get_json() and one.headers["ETag"]
    listed = client.get("/api/webhooks")
    assert listed.headers["X-Total-Count"] == "1"
    assert "secret" not in listed.get_json()[0]


def test_an_idempotent_create_replays_the_first_answer_secret_included(client):
    headers = {"Idempotency-Key": "hook-1"}
    first = client.post("/api/webhooks", json=HOOK, headers=headers)
    again = client.post("/api/webhooks", json=HOOK, headers=headers)
    assert again.status_code == 201 and again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert client.get("/api/webhooks").headers["X-Total-Count"] == "1"


@pytest.mark.parametrize("body, field", [
    ({"url": "ftp://example.com/x"}, "url"), ({"url": "file:///etc/passwd"}, "url"),
    ({"url": "not a url"}, "url"), ({}, "url"),
    ({"url": "http://a.example/x", "types": "instance.moved"}, "types"),
    ({"url": "http://a.example/x", "label": "env==x"}, "label"),
    ({"url": "http://a.example/x", "active": "yes please"}, "active"),
    ({"url": "http://a.example/x", "active": 0}, "active"),
    ({"url": "http://a.example/x", "nope": 1}, "nope"),
])
def test_bad_bodies_are_422_naming_the_field(client, body, field):
    assert_problem(client.post("/api/webhooks", json=body), 422, field)
    assert client.get("/api/webhooks").headers["X-Total-Count"] == "0"


def test_patch_changes_what_is_writable_and_ignores_server_set_fields(client):
    made = client.post("/api/webhooks", json=HOOK).get_json()
    path = f"/api/webhooks/{made['id']}"
    read = client.get(path).get_json()
    resp = client.patch(path, json={**read, "description": "chat", "types": None,
                                    "secret": "whsec_AAAA", "pending": 99, "failed": 7})
    assert resp.status_code == 200, resp.get_json()
    changed = resp.get_json()
    assert changed["description"] == "chat" and changed["types"] is None
    assert (changed["pending"], changed["failed"]) == (0, 0)
    assert changed["updated_at"] > made["updated_at"]
    assert_problem(client.patch(path, json={"url": "gopher://x"}), 422, "url")
    assert_problem(client.patch(path, json={"active": False},
                                headers={"If-Match": '"stale"'}), 412)


def test_while_inactive_nothing_is_queued_and_delivery_resumes_after(client, make_instance):
    made = client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/x"}).get_json()
    path = f"/api/webhooks/{made['id']}"
    make_instance()
    assert client.get(path).get_json()["pending"] == 1
    client.patch(path, json={"active": False})
    make_instance()
    assert client.get(path).get_json()["pending"] == 0
    client.patch(path, json={"active": True})
    assert client.get(path).get_json()["pending"] == 0
    make_instance()
    assert client.get(path).get_json()["pending"] == 1


def test_delete_and_404s(client):
    made = client.post("/api/webhooks", json=HOOK).get_json()
    assert client.delete(f"/api/webhooks/{made['id']}").status_code == 204
    assert_problem(client.get(f"/api/webhooks/{made['id']}"), 404)
    assert_problem(client.delete(f"/api/webhooks/{random_id()}"), 404)
    assert_problem(client.post(f"/api/webhooks/{random_id()}/rotate-secret"), 404)


def test_one_past_the_limit_is_409(app, client):
    app.config["MAX_WEBHOOKS"] = 2
    for _ in range(2):
        assert client.post("/api/webhooks", json=HOOK).status_code == 201
    assert_problem(client.post("/api/webhooks", json=HOOK), 409)
    assert client.get("/api/webhooks?limit=1").headers["Link"].endswith('rel="next"')


def test_rotation_answers_a_new_secret_once(client):
    made = client.post("/api/webhooks", json=HOOK).get_json()
    rotated = client.post(f"/api/webhooks/{made['id']}/rotate-secret")
    assert rotated.status_code == 200
    assert rotated.get_json()["secret"] not in (None, made["secret"])
    assert "secret" not in client.get(f"/api/webhooks/{made['id']}").get_json()


# -- targets: the resolution step alone ------------------------------------------------

def resolver(*addresses):
    def resolve(host, port):
        return list(addresses)
    return resolve


@pytest.mark.parametrize("address", [
    "169.254.169.254", "169.254.0.1", "fe80::1", "0.0.0.0", "::", "::ffff:169.254.169.254"])
def test_link_local_and_unspecified_addresses_are_refused(address):
    with pytest.raises(Refused) as refused:
        checked_address("metadata.example", 80, (), resolver(address))
    assert refused.value.reason == "blocked address"


def test_the_first_permitted_address_is_the_one_connected_to():
    assert checked_address("x.example", 80, (), resolver("169.254.1.1", "127.0.0.1")) == \
        "127.0.0.1"


def test_an_allow_list_restricts_further():
    allow = parse_allow("10.0.0.0/8, 127.0.0.0/8")
    assert permitted("10.1.2.3", allow) and permitted("127.0.0.1", allow)
    assert not permitted("192.168.1.1", allow)
    with pytest.raises(Refused):
        checked_address("x.example", 443, allow, resolver("192.168.1.1"))


def test_a_name_that_does_not_resolve_is_dns():
    def fails(host, port):
        raise OSError("no such name")
    with pytest.raises(Refused) as refused:
        checked_address("nowhere.invalid", 80, (), fails)
    assert refused.value.reason == "dns"


def test_signatures_are_hmac_sha256_of_id_timestamp_body_under_the_secret_key():
    secret = signing.new_secret()
    body = b'{"id":"x"}'
    header = signing.signature([secret], "msg_1", 1700000000, body)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"msg_1.1700000000." + body,
                                         hashlib.sha256).digest()).decode()
    assert header == f"v1,{expected}"
    assert len(signing.signature([secret, signing.new_secret()], "m", 1, body).split()) == 2


# -- giving up (in-process passes of the delivery job) -------------------------------

def test_after_the_give_up_time_an_event_is_counted_failed_and_the_next_is_tried(
        app, client, make_instance, monkeypatch):
    from test_fleet_servers import Receiver
    from webhooks import delivery

    receiver = Receiver()
    receiver.failing = True
    app.config.update(WEBHOOK_GIVE_UP=timedelta(seconds=0.3), WEBHOOK_RETRY_BASE=0.05)
    try:
        hook = client.post("/api/webhooks", json={"url": receiver.url}).get_json()
        make_instance()
        make_instance()
        outcomes = []
        monkeypatch.setattr(metrics, "delivered", outcomes.append)
        job = delivery.Delivery(app)
        deadline = time.monotonic() + 20
        state = {}
        while time.monotonic() < deadline:
            with app.app_context():
                job.run_once()
            state = client.get(f"/api/webhooks/{hook['id']}").get_json()
            if state["failed"] == 2 and not job.serving:
                break
            time.sleep(0.05)
        assert (state["failed"], state["pending"]) == (2, 0), state
        assert (state["last_status"], state["last_error"]) == (500, "http 5xx")
        assert outcomes.count("given_up") == 2 and "delivered" not in outcomes
        ids = [headers["webhook-id"] for headers, _, _ in receiver.received]
        first, second = [e["id"] for e in client.get("/api/events?after=p0&wait=2").get_json()]
        assert ids.index(second) > max(i for i, x in enumerate(ids) if x == first)
    finally:
        receiver.close()


def run_passes(app, job, until, timeout=20):
    """Passes of the delivery job until `until()` holds and no thread serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.app_context():
            job.run_once()
        if until() and not job.serving:
            return True
        time.sleep(0.05)
    return False


def test_a_lapsed_lease_is_taken_over_and_delivery_resumes_after_the_last_recorded_event(
        app, client, make_instance, monkeypatch):
    from test_fleet_servers import Receiver
    from webhooks import delivery
    from webhooks.store import Webhook

    receiver = Receiver()
    monkeypatch.setattr(delivery, "LEASE", timedelta(seconds=0.5))
    try:
        hook = client.post("/api/webhooks", json={"url": receiver.url}).get_json()
        make_instance()
        # A process that took the lease and died: it never sends nor renews.
        dead = delivery.Delivery(app)
        with app.app_context():
            assert dead.lease(hook["id"], delivery.utcnow())
        survivor = delivery.Delivery(app)
        with app.app_context():
            survivor.run_once()
        assert not survivor.serving and receiver.delivered() == []
        time.sleep(0.6)
        make_instance()
        assert run_passes(app, survivor, lambda: len(receiver.delivered()) == 2)
        with app.app_context():
            row = Webhook.get_by_id(hook["id"])
        assert row.lease_owner is None and row.delivered == 2
        events = [e["id"] for e in client.get("/api/events?after=p0&wait=2").get_json()]
        assert receiver.delivered() == events
    finally:
        receiver.close()


def test_more_events_than_a_batch_arrive_once_each_in_order(app, client, make_instance,
                                                            monkeypatch):
    from test_fleet_servers import Receiver
    from webhooks import delivery

    receiver = Receiver()
    monkeypatch.setattr(delivery, "BATCH", 3)
    try:
        hook = client.post("/api/webhooks", json={"url": receiver.url}).get_json()
        for _ in range(8):
            make_instance()
        job = delivery.Delivery(app)
        assert run_passes(app, job, lambda: len(receiver.delivered()) >= 8)
        events = [e["id"] for e in client.get("/api/events?after=p0&limit=100").get_json()]
        assert receiver.delivered() == events and len(events) == 8
        state = client.get(f"/api/webhooks/{hook['id']}").get_json()
        assert (state["pending"], state["last_status"], state["last_error"]) == (0, 200, None)
    finally:
        receiver.close()
