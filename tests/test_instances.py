"""The instance resource: /api/instances and /api/instances/{id} (CONTRACT Part 1)."""
import json
import os
import re
import uuid
from datetime import datetime
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

import models
from storage.ids import uuid7
from conftest import SITE, USER, assert_problem, random_id

URL = "/api/instances"
OTHER_SITE = "0f8e7d6c-5b4a-4c3d-9e2f-1a0b9c8d7e6f"
AGENT = "3c4d5e6f-7a8b-4c9d-8e0f-a1b2c3d4e5f6"
OTHER_USER = "7e6d5c4b-3a29-4817-a6f5-e4d3c2b1a090"
OTHER_AGENT = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
VALID = {"site_id": SITE, "user_id": USER, "name": "box"}
SQL = "'; DROP TABLE instance; --"
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")
LINK = re.compile(r'<([^>]*)>\s*;\s*rel="([^"]+)"')
WRITABLE = ("site_id", "user_id", "name", "instance_type", "status", "agent_id",
            "configuration", "environment_variables", "labels", "idle_timeout_s", "expires_at",
            "status_reason")


def body(**changes):
    """A valid create body with `changes` applied."""
    return {**VALID, **changes}


def without(field):
    return {key: value for key, value in VALID.items() if key != field}


def path_of(url):
    """The path and query of a URL, for the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def links(resp):
    """rel -> URL from the Link header (RFC 8288)."""
    return {rel: url for url, rel in LINK.findall(resp.headers.get("Link", ""))}


def total(resp):
    return int(resp.headers["X-Total-Count"])


def count_instances(client):
    resp = client.get(URL)
    assert resp.status_code == 200
    return total(resp)


def parse_timestamp(value):
    assert RFC3339_UTC.match(value), value
    stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    return stamp


def walk(client, url):
    """Every item reached by following rel="next" from `url`."""
    items, seen_urls = [], set()
    while url:
        assert url not in seen_urls, f"next link loops back to {url}"
        seen_urls.add(url)
        resp = client.get(url)
        assert resp.status_code == 200
        items.extend(resp.get_json())
        next_url = links(resp).get("next")
        url = path_of(next_url) if next_url else None
    return items


@pytest.fixture
def make_many(make_instance):
    """Create n instances (oldest first) and return their bodies."""
    def make(n, **fields):
        return [make_instance(name=f"box {i}", **fields) for i in range(n)]
    return make


@pytest.fixture
def fleet(make_instance):
    """Three running and two pending at SITE, two running at OTHER_SITE."""
    rows = []
    for site, status, n in ((SITE, "running", 3), (SITE, "pending", 2),
                            (OTHER_SITE, "running", 2)):
        rows += [make_instance(site_id=site, status=status) for _ in range(n)]
    return rows


# -- POST ----------------------------------------------------------------------

def test_create_returns_201_with_a_location_that_serves_the_new_instance(client):
    resp = client.post(URL, json=VALID)
    assert resp.status_code == 201
    assert resp.mimetype == "application/json"
    created = resp.get_json()
    location = resp.headers["Location"]
    assert urlsplit(location).path == f"{URL}/{created['id']}"
    fetched = client.get(path_of(location))
    assert fetched.status_code == 200
    assert fetched.get_json() == created


def test_create_fills_in_the_defaults(client):
    created = client.post(URL, json=VALID).get_json()
    assert created["site_id"] == SITE
    assert created["user_id"] == USER
    assert created["name"] == "box"
    assert created["instance_type"] == "browser"
    assert created["status"] == "pending"
    assert created["agent_id"] is None
    assert created["configuration"] == {}
    assert created["environment_variables"] == {}


def test_create_stores_every_field_sent(client):
    sent = body(instance_type="windows", status="running", agent_id=AGENT,
                configuration={"resolution": "1920x1080"},
                environment_variables={"DISPLAY": ":0"}, labels={"env": "prod"},
                idle_timeout_s=600, expires_at="2030-01-01T00:00:00.000000+00:00",
                status_reason="booted by hand")
    created = client.post(URL, json=sent).get_json()
    fetched = client.get(f"{URL}/{created['id']}").get_json()
    for field in WRITABLE:
        assert created[field] == sent[field], field
        assert fetched[field] == sent[field], field


def test_create_returns_exactly_the_documented_fields(instance):
    assert set(instance) == {"id", *WRITABLE, "created_at", "updated_at", "last_activity_at"}


def test_created_id_is_a_canonical_lowercase_uuid_version_7(instance):
    parsed = uuid.UUID(instance["id"])
    assert str(parsed) == instance["id"]
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_ids_of_successive_creates_sort_in_creation_order(make_many):
    ids = [row["id"] for row in make_many(10)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_draws_its_own_random_bits_for_ids():
    """Workers fork from one parent (serve --workers): ids they make in the
    same millisecond must still differ in their random bits."""
    uuid7()  # the parent has random bytes at hand
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, uuid7().bytes)
        os._exit(0)
    os.waitpid(pid, 0)
    in_child, in_parent = os.read(read_end, 16), uuid7().bytes
    os.close(read_end)
    os.close(write_end)
    # Bytes 8 to 15 hold 62 of the random bits (after the variant).
    assert in_child[8:] != in_parent[8:]


def test_created_at_equals_updated_at_on_create(instance):
    assert instance["created_at"] == instance["updated_at"]


def test_timestamps_are_rfc3339_in_utc_with_an_offset(instance):
    before = parse_timestamp(instance["created_at"])
    parse_timestamp(instance["updated_at"])
    assert abs((datetime.now(before.tzinfo) - before).total_seconds()) < 60


def test_uuid_inputs_in_upper_case_are_returned_canonical(client):
    created = client.post(URL, json=body(site_id=SITE.upper(), user_id=USER.upper(),
                                         agent_id=AGENT.upper())).get_json()
    assert created["site_id"] == SITE
    assert created["user_id"] == USER
    assert created["agent_id"] == AGENT


@pytest.mark.parametrize("payload, field", [
    (without("site_id"), "site_id"),
    (without("user_id"), "user_id"),
    (without("name"), "name"),
    (body(site_id="nope"), "site_id"),
    (body(site_id=SITE[:-1]), "site_id"),
    (body(site_id=None), "site_id"),
    (body(site_id=42), "site_id"),
    (body(user_id="not-a-uuid"), "user_id"),
    (body(user_id=None), "user_id"),
    (body(name=""), "name"),
    (body(name=" "), "name"),
    (body(name=" \t\n "), "name"),
    (body(name="\u3000"), "name"),
    (body(name="x" * 256), "name"),
    (body(name=42), "name"),
    (body(name=["box"]), "name"),
    (body(name=None), "name"),
    (body(instance_type="mac"), "instance_type"),
    (body(instance_type=""), "instance_type"),
    (body(instance_type=None), "instance_type"),
    (body(instance_type=1), "instance_type"),
    (body(status="deleted"), "status"),
    (body(status=None), "status"),
    (body(agent_id="agent-7"), "agent_id"),
    (body(agent_id=7), "agent_id"),
    (body(configuration=[]), "configuration"),
    (body(configuration="{}"), "configuration"),
    (body(configuration=1), "configuration"),
    (body(configuration=None), "configuration"),
    (body(environment_variables={"1X": "a"}), "environment_variables"),
    (body(environment_variables={"A-B": "a"}), "environment_variables"),
    (body(environment_variables={"": "a"}), "environment_variables"),
    (body(environment_variables={"A B": "a"}), "environment_variables"),
    (body(environment_variables={"A": 1}), "environment_variables"),
    (body(environment_variables={"A": True}), "environment_variables"),
    (body(environment_variables={"A": None}), "environment_variables"),
    (body(environment_variables={"A": {"B": "c"}}), "environment_variables"),
    (body(environment_variables=["A=b"]), "environment_variables"),
    (body(environment_variables=None), "environment_variables"),
    (body(colour="red"), "colour"),
])
def test_create_rejects(client, payload, field):
    assert_problem(client.post(URL, json=payload), 422, field)


def test_create_reports_every_bad_field_at_once(client):
    resp = client.post(URL, json={"name": "", "status": "bogus"})
    errors = assert_problem(resp, 422)["errors"]["json"]
    assert {"site_id", "user_id", "name", "status"} <= set(errors)


@pytest.mark.parametrize("field, allowed", [
    ("instance_type", models.INSTANCE_TYPES),
    ("status", models.INSTANCE_STATUSES),
])
def test_enum_errors_name_the_allowed_values(client, field, allowed):
    resp = client.post(URL, json=body(**{field: "bogus"}))
    message = " ".join(assert_problem(resp, 422, field)["errors"]["json"][field])
    for value in allowed:
        assert value in message, (value, message)


def test_a_rejected_create_stores_nothing(client, instance):
    assert count_instances(client) == 1
    assert client.post(URL, json=body(name="")).status_code == 422
    assert client.post(URL, json=body(colour="red")).status_code == 422
    assert client.post(URL, json=without("site_id")).status_code == 422
    assert count_instances(client) == 1


def test_name_of_exactly_255_characters_is_accepted(client):
    name = "n" * 255
    resp = client.post(URL, json=body(name=name))
    assert resp.status_code == 201
    assert client.get(f"{URL}/{resp.get_json()['id']}").get_json()["name"] == name


def test_name_of_255_emoji_is_accepted(client):
    name = "\U0001F680" * 255
    resp = client.post(URL, json=body(name=name))
    assert resp.status_code == 201
    assert resp.get_json()["name"] == name


def test_agent_id_null_is_accepted_on_create(client):
    resp = client.post(URL, json=body(agent_id=None))
    assert resp.status_code == 201
    assert resp.get_json()["agent_id"] is None


def test_nested_configuration_is_stored_as_sent(client):
    configuration = {
        "browser": {"engine": "chromium", "flags": ["--headless", "--no-sandbox"],
                    "window": {"width": 1280, "height": 720, "scale": 1.5}},
        "enabled": True, "retries": 0, "proxy": None, "tags": [],
        "deep": {"a": {"b": {"c": {"d": [1, {"e": "f"}]}}}},
    }
    created = client.post(URL, json=body(configuration=configuration)).get_json()
    assert created["configuration"] == configuration
    fetched = client.get(f"{URL}/{created['id']}").get_json()
    assert fetched["configuration"] == configuration


@pytest.mark.parametrize("text", [
    "Ünïcødé 名前 テスト",
    "rocket \U0001F680 family \U0001F468\u200D\U0001F469\u200D\U0001F467",
    SQL,
    "quote \" backslash \\ tab \t newline \n",
    "<script>alert(1)</script>",
    "Robert'); DELETE FROM instance WHERE ('1'='1",
])
def test_unusual_strings_are_stored_and_returned_verbatim(client, text):
    sent = body(name=text, configuration={text: text, "nested": {"value": text}},
                environment_variables={"VALUE": text, "_X1": text})
    created = client.post(URL, json=sent)
    assert created.status_code == 201
    fetched = client.get(f"{URL}/{created.get_json()['id']}").get_json()
    for field in ("name", "configuration", "environment_variables"):
        assert created.get_json()[field] == sent[field], field
        assert fetched[field] == sent[field], field
    assert count_instances(client) == 1


# -- GET one -------------------------------------------------------------------

def test_get_returns_the_instance(client, instance):
    resp = client.get(f"{URL}/{instance['id']}")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == instance


def test_get_with_an_upper_case_id_is_200(client, instance):
    resp = client.get(f"{URL}/{instance['id'].upper()}")
    assert resp.status_code == 200
    assert resp.get_json()["id"] == instance["id"]


def test_get_an_unknown_id_is_404(client, instance):
    assert_problem(client.get(f"{URL}/{random_id()}"), 404)


@pytest.mark.parametrize("bad_id", ["nope", "123", "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a0",
                                    "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a0g"])
def test_get_a_malformed_id_is_404(client, bad_id):
    assert_problem(client.get(f"{URL}/{bad_id}"), 404)


# -- PUT -----------------------------------------------------------------------

def test_put_changes_only_the_sent_fields(client, make_instance):
    before = make_instance(agent_id=AGENT, configuration={"a": 1},
                           environment_variables={"A": "1"})
    resp = client.put(f"{URL}/{before['id']}", json={"status": "running"})
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    after = client.get(f"{URL}/{before['id']}").get_json()
    assert after["status"] == "running"
    assert resp.get_json()["status"] == "running"
    for field in ("id", "created_at", *WRITABLE):
        if field != "status":
            assert after[field] == before[field], field


def test_put_can_change_every_writable_field(client, instance):
    changes = {"site_id": OTHER_SITE, "user_id": AGENT, "name": "renamed",
               "instance_type": "ubuntu", "status": "stopped", "agent_id": AGENT,
               "configuration": {"k": "v"}, "environment_variables": {"K": "v"}}
    resp = client.put(f"{URL}/{instance['id']}", json=changes)
    assert resp.status_code == 200
    fetched = client.get(f"{URL}/{instance['id']}").get_json()
    for field, value in changes.items():
        assert resp.get_json()[field] == value, field
        assert fetched[field] == value, field


def test_put_with_empty_body_changes_nothing(client, instance):
    resp = client.put(f"{URL}/{instance['id']}", json={})
    assert resp.status_code == 200
    assert resp.get_json() == instance
    assert client.get(f"{URL}/{instance['id']}").get_json() == instance


def test_put_that_changes_something_moves_updated_at_forward(client, instance):
    resp = client.put(f"{URL}/{instance['id']}", json={"name": "renamed"})
    assert resp.status_code == 200
    updated = resp.get_json()
    assert updated["created_at"] == instance["created_at"]
    assert parse_timestamp(updated["updated_at"]) > parse_timestamp(instance["updated_at"])
    fetched = client.get(f"{URL}/{instance['id']}").get_json()
    assert fetched["updated_at"] == updated["updated_at"]
    assert fetched["created_at"] == instance["created_at"]


def test_put_replaces_configuration_whole(client, make_instance):
    created = make_instance(configuration={"a": 1, "b": {"c": 2, "d": 3}})
    new = {"b": {"e": 4}}
    resp = client.put(f"{URL}/{created['id']}", json={"configuration": new})
    assert resp.status_code == 200
    assert resp.get_json()["configuration"] == new
    assert client.get(f"{URL}/{created['id']}").get_json()["configuration"] == new


def test_put_replaces_environment_variables_whole(client, make_instance):
    created = make_instance(environment_variables={"A": "1", "B": "2"})
    resp = client.put(f"{URL}/{created['id']}", json={"environment_variables": {"C": "3"}})
    assert resp.status_code == 200
    fetched = client.get(f"{URL}/{created['id']}").get_json()
    assert fetched["environment_variables"] == {"C": "3"}


def test_put_with_empty_objects_clears_configuration_and_environment(client, make_instance):
    created = make_instance(configuration={"a": 1}, environment_variables={"A": "1"})
    resp = client.put(f"{URL}/{created['id']}",
                      json={"configuration": {}, "environment_variables": {}})
    assert resp.status_code == 200
    fetched = client.get(f"{URL}/{created['id']}").get_json()
    assert fetched["configuration"] == {}
    assert fetched["environment_variables"] == {}


@pytest.mark.parametrize("old, new", [
    ({"flag": 1}, {"flag": True}),
    ({"flag": True}, {"flag": 1}),
    ({"flag": 0}, {"flag": False}),
    ({"items": [1, 0]}, {"items": [True, False]}),
])
def test_put_stores_a_configuration_that_differs_only_in_json_type(client, make_instance,
                                                                   old, new):
    created = make_instance(configuration=old)
    resp = client.put(f"{URL}/{created['id']}", json={"configuration": new})
    assert resp.status_code == 200
    assert resp.get_json()["configuration"] == new
    fetched = client.get(f"{URL}/{created['id']}").get_json()
    # == treats True and 1 alike, so compare the JSON types too.
    assert repr(fetched["configuration"]) == repr(new)


def test_put_ignores_read_only_fields(client, instance):
    resp = client.put(f"{URL}/{instance['id']}", json={
        "id": random_id(), "created_at": "1999-01-01T00:00:00Z",
        "updated_at": "1999-01-01T00:00:00Z", "name": "renamed"})
    assert resp.status_code == 200
    updated = resp.get_json()
    assert updated["id"] == instance["id"]
    assert updated["created_at"] == instance["created_at"]
    assert updated["updated_at"] != "1999-01-01T00:00:00Z"
    assert updated["name"] == "renamed"
    assert client.get(f"{URL}/{instance['id']}").status_code == 200


def test_put_with_only_read_only_fields_changes_nothing(client, instance):
    resp = client.put(f"{URL}/{instance['id']}", json={
        "id": random_id(), "created_at": "garbage", "updated_at": None})
    assert resp.status_code == 200
    assert resp.get_json() == instance


def test_get_edit_put_round_trip_of_the_whole_body_works(client, make_instance):
    created = make_instance(agent_id=AGENT, configuration={"a": [1, 2]},
                            environment_variables={"A": "1"})
    edited = client.get(f"{URL}/{created['id']}").get_json()
    edited["name"] = "edited"
    edited["status"] = "paused"
    resp = client.put(f"{URL}/{created['id']}", json=edited)
    assert resp.status_code == 200
    fetched = client.get(f"{URL}/{created['id']}").get_json()
    for field in ("id", "created_at", *WRITABLE):
        assert fetched[field] == edited[field], field


def test_put_accepts_a_null_agent_id(client, make_instance):
    created = make_instance(agent_id=AGENT)
    resp = client.put(f"{URL}/{created['id']}", json={"agent_id": None})
    assert resp.status_code == 200
    assert resp.get_json()["agent_id"] is None
    assert client.get(f"{URL}/{created['id']}").get_json()["agent_id"] is None


def test_put_returns_upper_case_uuids_canonical(client, instance):
    resp = client.put(f"{URL}/{instance['id'].upper()}", json={"agent_id": AGENT.upper()})
    assert resp.status_code == 200
    assert resp.get_json()["id"] == instance["id"]
    assert resp.get_json()["agent_id"] == AGENT


@pytest.mark.parametrize("payload, field", [
    ({"colour": "red"}, "colour"),
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 256}, "name"),
    ({"configuration": None}, "configuration"),
    ({"configuration": []}, "configuration"),
    ({"environment_variables": None}, "environment_variables"),
    ({"environment_variables": {"1X": "a"}}, "environment_variables"),
    ({"environment_variables": {"A": 1}}, "environment_variables"),
    ({"status": None}, "status"),
    ({"status": "bogus"}, "status"),
    ({"instance_type": None}, "instance_type"),
    ({"instance_type": "mac"}, "instance_type"),
    ({"site_id": None}, "site_id"),
    ({"site_id": "nope"}, "site_id"),
    ({"user_id": None}, "user_id"),
    ({"agent_id": "nope"}, "agent_id"),
])
def test_put_rejects(client, instance, payload, field):
    assert_problem(client.put(f"{URL}/{instance['id']}", json=payload), 422, field)


def test_a_rejected_put_changes_nothing(client, instance):
    before = client.get(f"{URL}/{instance['id']}").get_json()
    resp = client.put(f"{URL}/{instance['id']}",
                      json={"name": "renamed", "status": "running", "colour": "red"})
    assert_problem(resp, 422, "colour")
    assert client.get(f"{URL}/{instance['id']}").get_json() == before


def test_put_on_an_unknown_id_is_404(client, instance):
    assert_problem(client.put(f"{URL}/{random_id()}", json={"name": "x"}), 404)
    assert count_instances(client) == 1


def test_put_on_a_malformed_id_is_404(client):
    assert_problem(client.put(f"{URL}/nope", json={"name": "x"}), 404)


# -- DELETE --------------------------------------------------------------------

def test_delete_answers_204_with_an_empty_body(client, instance):
    resp = client.delete(f"{URL}/{instance['id']}")
    assert resp.status_code == 204
    assert resp.get_data() == b""


def test_deleted_instance_is_gone(client, instance):
    assert client.delete(f"{URL}/{instance['id']}").status_code == 204
    assert_problem(client.get(f"{URL}/{instance['id']}"), 404)
    assert count_instances(client) == 0


def test_second_delete_is_404(client, instance):
    assert client.delete(f"{URL}/{instance['id']}").status_code == 204
    assert_problem(client.delete(f"{URL}/{instance['id']}"), 404)


def test_delete_of_an_unknown_id_is_404(client, instance):
    assert_problem(client.delete(f"{URL}/{random_id()}"), 404)
    assert count_instances(client) == 1


def test_delete_of_a_malformed_id_is_404(client):
    assert_problem(client.delete(f"{URL}/nope"), 404)


def test_delete_with_an_upper_case_id_deletes(client, instance):
    assert client.delete(f"{URL}/{instance['id'].upper()}").status_code == 204
    assert_problem(client.get(f"{URL}/{instance['id']}"), 404)


def rows_of(model, instance_id):
    with models.db.connection_context():
        return model.select().where(model.instance == uuid.UUID(instance_id)).count()


def test_delete_instance_removes_its_logs_and_plans(client, instance, make_instance,
                                                    make_log, make_plan):
    other = make_instance(name="other")
    for target in (instance, other):
        make_log(instance_id=target["id"])
        make_log(instance_id=target["id"], log_type="error", level="error")
        make_plan(instance_id=target["id"])
    assert rows_of(models.InstanceLog, instance["id"]) == 2
    assert rows_of(models.InstancePlan, instance["id"]) == 1

    assert client.delete(f"{URL}/{instance['id']}").status_code == 204

    assert rows_of(models.InstanceLog, instance["id"]) == 0
    assert rows_of(models.InstancePlan, instance["id"]) == 0
    assert_problem(client.get(f"{URL}/{instance['id']}/logs"), 404)
    assert_problem(client.get(f"{URL}/{instance['id']}/plans"), 404)
    # The other instance keeps its own.
    assert rows_of(models.InstanceLog, other["id"]) == 2
    assert rows_of(models.InstancePlan, other["id"]) == 1
    assert total(client.get(f"{URL}/{other['id']}/logs")) == 2
    assert total(client.get(f"{URL}/{other['id']}/plans")) == 1


# -- Lists ---------------------------------------------------------------------

def test_empty_list_is_200_with_zero_total_and_no_links(client):
    resp = client.get(URL)
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json() == []
    assert total(resp) == 0
    assert links(resp) == {}


def test_list_default_limit_is_50(client, make_many):
    make_many(51)
    resp = client.get(URL)
    assert resp.status_code == 200
    assert len(resp.get_json()) == 50
    assert total(resp) == 51
    assert parse_qs(urlsplit(links(resp)["next"]).query)["offset"] == ["50"]


def test_total_count_ignores_limit_and_offset(client, make_many):
    make_many(5)
    resp = client.get(f"{URL}?limit=2&offset=1")
    assert resp.status_code == 200
    assert len(resp.get_json()) == 2
    assert total(resp) == 5


def test_limit_zero_gives_an_empty_page_with_the_total(client, make_many):
    make_many(3)
    resp = client.get(f"{URL}?limit=0")
    assert resp.status_code == 200
    assert resp.get_json() == []
    assert total(resp) == 3


def test_limit_1000_is_accepted(client, make_many):
    make_many(3)
    resp = client.get(f"{URL}?limit=1000")
    assert resp.status_code == 200
    assert len(resp.get_json()) == 3
    assert total(resp) == 3


@pytest.mark.parametrize("query, field", [
    ("limit=1001", "limit"),
    ("limit=-1", "limit"),
    ("limit=abc", "limit"),
    ("limit=1.5", "limit"),
    ("limit=", "limit"),
    ("offset=-1", "offset"),
    ("offset=abc", "offset"),
    ("offset=2.5", "offset"),
    # Digits only (1.4): int() would take these as 10.
    ("limit=%2010", "limit"), ("limit=10%0A", "limit"), ("limit=+10", "limit"),
    ("limit=1_0", "limit"), ("limit=%D9%A1%D9%A0", "limit"), ("offset=%091", "offset"),
    ("offset=0x1", "offset"), ("offset=1e3", "offset"),
    ("site_id=nope", "site_id"),
    ("site_id=", "site_id"),
    ("status=bogus", "status"),
    ("status=RUNNING", "status"),
    ("sttaus=running", "sttaus"),
    ("page=2", "page"),
])
def test_list_rejects_bad_query(client, instance, query, field):
    assert_problem(client.get(f"{URL}?{query}"), 422, field, where="query")


def test_query_integers_may_have_leading_zeros_and_any_length(client, make_many):
    make_many(3)
    assert len(client.get(f"{URL}?limit=0002").get_json()) == 2
    resp = client.get(f"{URL}?offset={'9' * 40}")
    assert resp.status_code == 200
    assert resp.get_json() == [] and resp.headers["X-Total-Count"] == "3"


def test_offset_past_the_end_is_an_empty_page(client, make_many):
    make_many(3)
    resp = client.get(f"{URL}?offset=10")
    assert resp.status_code == 200
    assert resp.get_json() == []
    assert total(resp) == 3
    assert "next" not in links(resp)


def test_list_is_newest_first(client, make_many):
    created = make_many(6)
    listed = client.get(URL).get_json()
    assert [row["id"] for row in listed] == [row["id"] for row in reversed(created)]
    keys = [(parse_timestamp(row["created_at"]), row["id"]) for row in listed]
    assert keys == sorted(keys, reverse=True)


def test_order_is_stable_across_pages(client, make_many):
    make_many(7)
    whole = [row["id"] for row in client.get(f"{URL}?limit=1000").get_json()]
    for limit in (1, 2, 3):
        paged = []
        for offset in range(0, 7, limit):
            paged += [row["id"] for row in
                      client.get(f"{URL}?limit={limit}&offset={offset}").get_json()]
        assert paged == whole, limit


def test_first_page_links_next_only(client, make_many):
    make_many(5)
    rels = links(client.get(f"{URL}?limit=2"))
    assert set(rels) == {"next"}
    assert parse_qs(urlsplit(rels["next"]).query) == {"limit": ["2"], "offset": ["2"]}


def test_middle_page_links_next_and_prev(client, make_many):
    make_many(5)
    rels = links(client.get(f"{URL}?limit=2&offset=2"))
    assert set(rels) == {"next", "prev"}
    assert parse_qs(urlsplit(rels["next"]).query)["offset"] == ["4"]
    assert parse_qs(urlsplit(rels["prev"]).query)["offset"] == ["0"]


def test_last_page_links_prev_only(client, make_many):
    make_many(5)
    rels = links(client.get(f"{URL}?limit=2&offset=4"))
    assert set(rels) == {"prev"}
    assert parse_qs(urlsplit(rels["prev"]).query)["offset"] == ["2"]


def test_single_page_has_no_links(client, make_many):
    make_many(3)
    assert links(client.get(f"{URL}?limit=3")) == {}
    assert links(client.get(URL)) == {}


def test_links_point_at_the_collection(client, make_many):
    make_many(3)
    rels = links(client.get(f"{URL}?limit=1&offset=1"))
    assert set(rels) == {"next", "prev"}
    for url in rels.values():
        assert urlsplit(url).path == URL


def test_links_keep_the_other_query_parameters(client, fleet):
    resp = client.get(f"{URL}?status=running&limit=2")
    assert total(resp) == 5
    query = parse_qs(urlsplit(links(resp)["next"]).query)
    assert query == {"status": ["running"], "limit": ["2"], "offset": ["2"]}
    resp = client.get(path_of(links(resp)["next"]))
    assert resp.status_code == 200
    assert total(resp) == 5
    assert all(row["status"] == "running" for row in resp.get_json())
    query = parse_qs(urlsplit(links(resp)["prev"]).query)
    assert query == {"status": ["running"], "limit": ["2"], "offset": ["0"]}


def test_following_next_links_walks_the_whole_collection(client, make_many):
    created = make_many(7)
    walked = walk(client, f"{URL}?limit=3")
    ids = [row["id"] for row in walked]
    assert len(ids) == len(set(ids)) == 7
    assert ids == [row["id"] for row in reversed(created)]


def test_following_next_links_of_a_filtered_list_keeps_the_filter(client, fleet):
    walked = walk(client, f"{URL}?site_id={SITE}&status=running&limit=1")
    expected = [row["id"] for row in reversed(fleet)
                if row["site_id"] == SITE and row["status"] == "running"]
    assert [row["id"] for row in walked] == expected


@pytest.mark.parametrize("query, expected", [
    (f"site_id={SITE}", 5),
    (f"site_id={OTHER_SITE}", 2),
    ("status=running", 5),
    ("status=pending", 2),
    ("status=stopped", 0),
    (f"site_id={SITE}&status=running", 3),
    (f"site_id={OTHER_SITE}&status=pending", 0),
    (f"site_id={random_id()}", 0),
])
def test_list_filters_with_exact_totals(client, fleet, query, expected):
    resp = client.get(f"{URL}?{query}")
    assert resp.status_code == 200
    assert total(resp) == expected
    rows = resp.get_json()
    assert len(rows) == expected
    wanted = parse_qs(query)
    for row in rows:
        for field, (value,) in wanted.items():
            assert row[field] == value, (field, row)


def test_filter_totals_ignore_limit(client, fleet):
    resp = client.get(f"{URL}?site_id={SITE}&limit=1")
    assert len(resp.get_json()) == 1
    assert total(resp) == 5


def test_upper_case_site_id_filter_matches(client, fleet):
    resp = client.get(f"{URL}?site_id={SITE.upper()}")
    assert resp.status_code == 200
    assert total(resp) == 5
    assert all(row["site_id"] == SITE for row in resp.get_json())


def test_instance_created_with_upper_case_site_id_is_found_by_lower_case_filter(client):
    client.post(URL, json=body(site_id=OTHER_SITE.upper()))
    resp = client.get(f"{URL}?site_id={OTHER_SITE}")
    assert total(resp) == 1


# -- Content-Type --------------------------------------------------------------

def test_success_responses_are_application_json(client, instance):
    item = f"{URL}/{instance['id']}"
    responses = [
        (201, client.post(URL, json=VALID)),
        (200, client.get(URL)),
        (200, client.get(item)),
        (200, client.put(item, json={"name": "renamed"})),
        (200, client.put(item, json={})),
    ]
    for status, resp in responses:
        assert resp.status_code == status
        assert resp.mimetype == "application/json", resp.headers["Content-Type"]


# -- PATCH ---------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    "application/json", "application/merge-patch+json",
    "application/merge-patch+json; charset=utf-8",
])
def test_patch_changes_only_the_sent_field(client, make_instance, content_type):
    before = make_instance(agent_id=AGENT, configuration={"a": 1},
                           environment_variables={"A": "1"})
    resp = client.patch(f"{URL}/{before['id']}", data=json.dumps({"name": "renamed"}),
                        content_type=content_type)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.get_json()["name"] == "renamed"
    after = client.get(f"{URL}/{before['id']}").get_json()
    assert after["name"] == "renamed"
    for field in ("id", "created_at", *WRITABLE):
        if field != "name":
            assert after[field] == before[field], field
    assert parse_timestamp(after["updated_at"]) > parse_timestamp(before["updated_at"])


@pytest.mark.parametrize("payload", [{}, {"name": "box"}, {"status": "pending"}],
                         ids=["empty", "same-name", "same-status"])
def test_patch_that_changes_nothing_leaves_updated_at_alone(client, instance, payload):
    resp = client.patch(f"{URL}/{instance['id']}", data=json.dumps(payload),
                        content_type="application/merge-patch+json")
    assert resp.status_code == 200
    assert resp.get_json()["updated_at"] == instance["updated_at"]
    assert resp.get_json() == instance
    assert client.get(f"{URL}/{instance['id']}").get_json() == instance


@pytest.mark.parametrize("payload, field", [
    ({"name": "renamed", "colour": "red"}, "colour"),
    ({"name": "renamed", "status": "bogus"}, "status"),
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"status": "running", "agent_id": "agent-7"}, "agent_id"),
    ({"configuration": []}, "configuration"),
    ({"environment_variables": {"1X": "a"}}, "environment_variables"),
])
def test_patch_with_an_invalid_field_is_422_naming_it_and_changes_nothing(client, instance,
                                                                          payload, field):
    assert_problem(client.patch(f"{URL}/{instance['id']}", json=payload), 422, field)
    assert client.get(f"{URL}/{instance['id']}").get_json() == instance


# -- List filters: owner, agent, type and lists of values ----------------------

@pytest.fixture
def crowd(make_instance):
    """Instances that differ in user, agent, type and status."""
    return [make_instance(user_id=user, agent_id=agent, instance_type=kind, status=status)
            for user, agent, kind, status in (
                (USER, AGENT, "ubuntu", "running"),
                (USER, None, "windows", "paused"),
                (OTHER_USER, AGENT, "browser", "running"),
                (OTHER_USER, OTHER_AGENT, "ubuntu", "stopped"),
                (USER, AGENT, "windows", "running"),
                (USER, OTHER_AGENT, "browser", "error"),
            )]


@pytest.mark.parametrize("query, expected", [
    (f"user_id={USER}", 4),
    (f"user_id={OTHER_USER}", 2),
    (f"user_id={random_id()}", 0),
    (f"agent_id={AGENT}", 3),
    (f"agent_id={OTHER_AGENT}", 2),
    (f"agent_id={AGENT.upper()}", 3),
    ("instance_type=ubuntu", 2),
    ("instance_type=browser", 2),
    ("instance_type=ubuntu,windows", 4),
    ("status=running,paused", 4),
    ("status=paused,running", 4),
    ("status=running,paused,stopped,error", 6),
    ("status=pending,starting", 0),
    ("status=running,paused&instance_type=windows", 2),
    (f"user_id={USER}&agent_id={AGENT}&status=running", 2),
    (f"user_id={OTHER_USER}&instance_type=ubuntu,browser&status=stopped", 1),
    (f"user_id={USER}&agent_id={OTHER_AGENT}&instance_type=ubuntu", 0),
])
def test_list_filters_combine_with_and_and_give_exact_totals(client, crowd, query, expected):
    resp = client.get(f"{URL}?{query}&limit=1000")
    assert resp.status_code == 200
    assert total(resp) == expected
    rows = resp.get_json()
    assert len(rows) == expected
    for row in rows:
        for field, (value,) in parse_qs(query).items():
            assert row[field] in value.lower().split(","), (field, row)
    # The same rows, picked out of the whole list by hand.
    wanted = parse_qs(query)
    matching = [row["id"] for row in reversed(crowd)
                if all(row[field] in value.lower().split(",")
                       for field, (value,) in wanted.items())]
    assert [row["id"] for row in rows] == matching


@pytest.mark.parametrize("query, field", [
    ("user_id=nope", "user_id"),
    ("user_id=", "user_id"),
    (f"user_id={USER[:-1]}", "user_id"),
    ("agent_id=agent-7", "agent_id"),
    ("agent_id=", "agent_id"),
    ("instance_type=mac", "instance_type"),
    ("instance_type=ubuntu,mac", "instance_type"),
    ("instance_type=Ubuntu", "instance_type"),
    ("instance_type=", "instance_type"),
    ("status=running,bogus", "status"),
    ("status=running,", "status"),
    ("status=,", "status"),
    ("status=", "status"),
    ("q=", "q"),
    ("q=" + "x" * 256, "q"),
])
def test_list_rejects_bad_filter_values(client, crowd, query, field):
    assert_problem(client.get(f"{URL}?{query}"), 422, field, where="query")


@pytest.mark.parametrize("query, field", [
    ("status=running&status=paused", "status"),
    ("status=running&status=running", "status"),
    ("instance_type=ubuntu&instance_type=windows", "instance_type"),
    (f"user_id={USER}&user_id={OTHER_USER}", "user_id"),
    ("q=box&q=other", "q"),
    ("sort=name&sort=status", "sort"),
])
def test_a_repeated_query_parameter_is_422(client, crowd, query, field):
    assert_problem(client.get(f"{URL}?{query}"), 422, field, where="query")


# -- Search: q -----------------------------------------------------------------

SEARCHABLE = ("my box", "Écran principal", "second écran", "100% done", "100 percent",
              "snake_case", "snakeXcase", "Plain")


@pytest.mark.parametrize("text, expected", [
    ("BOX", {"my box"}),
    ("my box", {"my box"}),
    ("écran", {"Écran principal", "second écran"}),
    ("ÉCRAN", {"Écran principal", "second écran"}),
    ("ran pr", {"Écran principal"}),
    ("%", {"100% done"}),
    ("0%", {"100% done"}),
    ("_", {"snake_case"}),
    ("e_c", {"snake_case"}),
    ("100", {"100% done", "100 percent"}),
    ("plain", {"Plain"}),
    ("[a-z]", set()),
    ("nothing", set()),
    ("x" * 255, set()),
])
def test_q_finds_names_containing_the_text_ignoring_case(client, make_instance, text,
                                                         expected):
    for name in SEARCHABLE:
        make_instance(name=name)
    resp = client.get(f"{URL}?{urlencode({'q': text})}")
    assert resp.status_code == 200
    assert total(resp) == len(expected)
    names = [row["name"] for row in resp.get_json()]
    assert len(names) == len(expected)
    assert set(names) == expected


def test_q_combines_with_other_filters(client, make_instance):
    make_instance(name="web box", status="running")
    make_instance(name="web box", status="stopped")
    make_instance(name="db", status="running")
    resp = client.get(f"{URL}?q=BOX&status=running")
    assert resp.status_code == 200
    assert total(resp) == 1
    [row] = resp.get_json()
    assert (row["name"], row["status"]) == ("web box", "running")


# -- Sort ----------------------------------------------------------------------

STATUS_RANK = {status: rank for rank, status in enumerate(models.INSTANCE_STATUSES)}


def expected_order(rows, key, descending=False):
    """`rows` (oldest first) as the sorted list must give them: by `key`, ties
    newest first."""
    return [row["id"] for row in sorted(reversed(rows), key=key, reverse=descending)]


def listed_ids(client, query):
    resp = client.get(f"{URL}?{query}&limit=1000")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert total(resp) == len(resp.get_json())
    return [row["id"] for row in resp.get_json()]


@pytest.mark.parametrize("sort, descending", [("name", False), ("-name", True)])
def test_sort_by_name_orders_by_code_point(client, make_instance, sort, descending):
    rows = [make_instance(name=name) for name in
            ("b", "B", "a", "Z", "é", "Ä", "10", "9", "a b", "ab", "\U0001F680", "\uffee")]
    ids = listed_ids(client, f"sort={sort}")
    assert ids == expected_order(rows, lambda row: row["name"], descending)
    names = [client.get(f"{URL}/{row_id}").get_json()["name"] for row_id in ids]
    assert names == sorted(names, reverse=descending)
    assert names[:4] == (["\U0001F680", "\uffee", "é", "Ä"] if descending
                         else ["10", "9", "B", "Z"])


@pytest.mark.parametrize("sort, descending", [("status", False), ("-status", True)])
def test_sort_by_status_follows_the_lifecycle_not_the_alphabet(client, make_instance, sort,
                                                               descending):
    rows = [make_instance(status=status) for status in
            ("error", "paused", "pending", "terminated", "running", "stopped", "starting",
             "stopping")]
    ids = listed_ids(client, f"sort={sort}")
    assert ids == expected_order(rows, lambda row: STATUS_RANK[row["status"]], descending)
    statuses = [row["status"] for row in client.get(f"{URL}?sort={sort}").get_json()]
    lifecycle = list(models.INSTANCE_STATUSES)
    assert statuses == (lifecycle[::-1] if descending else lifecycle)


@pytest.mark.parametrize("sort, key, descending", [
    ("status", lambda row: STATUS_RANK[row["status"]], False),
    ("-status", lambda row: STATUS_RANK[row["status"]], True),
    ("name", lambda row: row["name"], False),
    ("-name", lambda row: row["name"], True),
    ("status,name", lambda row: (STATUS_RANK[row["status"]], row["name"]), False),
])
def test_sorted_pages_never_repeat_or_skip_rows(client, make_instance, sort, key,
                                                descending):
    rows = [make_instance(name=name, status=status) for name, status in (
        ("b", "running"), ("a", "paused"), ("b", "running"), ("a", "running"),
        ("b", "paused"), ("c", "running"), ("a", "running"), ("b", "pending"),
        ("a", "paused"))]
    walked = [row["id"] for row in walk(client, f"{URL}?sort={sort}&limit=2")]
    assert len(walked) == len(set(walked)) == len(rows)
    assert walked == expected_order(rows, key, descending)


def test_sort_on_several_fields_applies_them_in_turn(client, make_instance):
    rows = [make_instance(name=name, status=status) for name, status in (
        ("b", "running"), ("a", "stopped"), ("c", "running"), ("a", "running"),
        ("b", "stopped"))]
    ids = listed_ids(client, "sort=-status,name")
    assert ids == [rows[i]["id"] for i in (1, 4, 3, 0, 2)]


@pytest.mark.parametrize("sort, expected", [
    ("created_at", [0, 1, 2, 3]),
    ("-created_at", [3, 2, 1, 0]),
    ("updated_at", [1, 3, 2, 0]),
    ("-updated_at", [0, 2, 3, 1]),
])
def test_sort_by_timestamps(client, make_instance, sort, expected):
    rows = [make_instance(name=f"box {i}") for i in range(4)]
    for row in (rows[2], rows[0]):  # updated in this order, after all were created
        assert client.patch(f"{URL}/{row['id']}", json={"name": "edited"}).status_code == 200
    assert listed_ids(client, f"sort={sort}") == [rows[i]["id"] for i in expected]


@pytest.mark.parametrize("sort", [
    "bogus", "-bogus", "name,bogus", "site_id", "agent_id", "--name", "+name", "Name",
    "", ",", "name,",
])
def test_an_unknown_sort_field_is_422_listing_the_allowed_fields(client, instance, sort):
    body = assert_problem(client.get(f"{URL}?{urlencode({'sort': sort})}"), 422, "sort",
                          where="query")
    if sort.strip(","):
        message = " ".join(body["errors"]["query"]["sort"])
        for field in ("created_at", "updated_at", "name", "status"):
            assert field in message, message


def test_paging_links_keep_the_sort_and_filter_parameters(client, crowd):
    query = f"sort=-status,name&status=running,paused&user_id={USER}&limit=1"
    resp = client.get(f"{URL}?{query}")
    assert resp.status_code == 200
    assert total(resp) == 3
    rels = links(resp)
    assert set(rels) == {"next"}
    assert parse_qs(urlsplit(rels["next"]).query) == {
        "sort": ["-status,name"], "status": ["running,paused"], "user_id": [USER],
        "limit": ["1"], "offset": ["1"]}
    second = client.get(path_of(rels["next"]))
    assert total(second) == 3
    assert parse_qs(urlsplit(links(second)["prev"]).query)["sort"] == ["-status,name"]
    walked = walk(client, f"{URL}?{query}")
    assert [row["status"] for row in walked] == ["paused", "running", "running"]
    assert all(row["user_id"] == USER for row in walked)
