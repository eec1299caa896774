"""Plans of an instance, /api/instances/{id}/plans: what only plans have (their
fields, statuses and filters), and what deleting an instance does to its plans
and logs. What plans share with logs is in test_nested.py."""
import re
import uuid
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

import models
from conftest import assert_problem, random_id

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
VALID_PLAN = {"title": "Open the browser", "plan_type": "task"}


@pytest.fixture
def plans_url(instance):
    return f"/api/instances/{instance['id']}/plans"


@pytest.fixture
def count_rows(app):
    """How many rows of `model` the database holds, optionally for one instance."""
    def count(model, instance_id=None):
        with models.db.connection_context():
            query = model.select()
            if instance_id is not None:
                query = query.where(model.instance == instance_id)
            return query.count()
    return count


def path_of(url):
    """The path and query of an absolute URL, for the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def case_id(value):
    """A short readable test id for a table row."""
    if isinstance(value, dict):
        return ",".join(f"{key}={str(val)[:12]!r}" for key, val in value.items())
    return str(value)


# -- create ------------------------------------------------------------------

def test_create_plan_answers_201_with_location_of_the_same_plan(client, plans_url):
    resp = client.post(plans_url, json={
        "title": "Book a flight", "plan_type": "objective", "description": "to Lisbon",
        "status": "in_progress", "priority": 5, "instructions": "Use the cheapest fare."})

    assert resp.status_code == 201
    assert resp.mimetype == "application/json"
    created = resp.get_json()
    location = resp.headers["Location"]
    assert urlsplit(location).path == f"{plans_url}/{created['id']}"
    fetched = client.get(path_of(location))
    assert fetched.status_code == 200
    assert fetched.mimetype == "application/json"
    assert fetched.get_json() == created
    assert created["title"] == "Book a flight"
    assert created["plan_type"] == "objective"
    assert created["description"] == "to Lisbon"
    assert created["status"] == "in_progress"
    assert created["priority"] == 5
    assert created["instructions"] == "Use the cheapest fare."


def test_create_plan_fills_defaults_and_server_fields(client, instance, plans_url):
    resp = client.post(plans_url, json=VALID_PLAN)

    assert resp.status_code == 201
    plan = resp.get_json()
    assert plan["description"] is None
    assert plan["status"] == "pending"
    assert plan["priority"] == 0
    assert plan["instructions"] is None
    assert plan["instance_id"] == instance["id"]
    assert str(uuid.UUID(plan["id"])) == plan["id"]
    created_at = datetime.fromisoformat(plan["created_at"])
    assert created_at.utcoffset() == timedelta(0)
    assert datetime.fromisoformat(plan["updated_at"]) == created_at


def test_create_plan_accepts_an_upper_case_parent_id_and_answers_canonical(client, instance):
    resp = client.post(f"/api/instances/{instance['id'].upper()}/plans", json=VALID_PLAN)

    assert resp.status_code == 201
    assert resp.get_json()["instance_id"] == instance["id"]
    assert instance["id"] in resp.headers["Location"]


def test_create_plan_ignores_read_only_fields_in_the_body(client, instance, make_instance,
                                                          plans_url):
    other = make_instance(name="other")
    sent_id = random_id()
    resp = client.post(plans_url, json={
        **VALID_PLAN, "id": sent_id, "instance_id": other["id"],
        "created_at": "2000-01-01T00:00:00Z", "updated_at": "2000-01-01T00:00:00Z"})

    assert resp.status_code == 201
    plan = resp.get_json()
    assert plan["id"] != sent_id
    assert plan["instance_id"] == instance["id"]
    assert not plan["created_at"].startswith("2000-")
    assert not plan["updated_at"].startswith("2000-")
    assert client.get(f"/api/instances/{other['id']}/plans").get_json() == []


@pytest.mark.parametrize("fields", [
    {"priority": INT32_MAX},
    {"priority": INT32_MIN},
    {"priority": -1},
    {"title": "t" * 500},
    {"title": "x"},
    {"title": "  padded  "},
    {"plan_type": "a" + "b" * 63},
    {"plan_type": "sub.task_v2-b"},
    {"description": None, "instructions": None},
    {"description": "", "instructions": ""},
    {"description": "d" * 10000, "instructions": "step 1\nstep 2"},
    *({"status": status} for status in STATUSES),
], ids=case_id)
def test_create_plan_accepts_values_at_the_boundaries(client, plans_url, fields):
    resp = client.post(plans_url, json={**VALID_PLAN, **fields})

    assert resp.status_code == 201, resp.get_json()
    plan = resp.get_json()
    fetched = client.get(path_of(resp.headers["Location"])).get_json()
    for name, value in fields.items():
        if name == "title":
            # 1.6: a title may be stored trimmed or as sent.
            assert plan[name] in (value, value.strip())
        else:
            assert plan[name] == value
        assert fetched[name] == plan[name]


@pytest.mark.parametrize("sent, stored", [
    (3458.0, 3458), (-2.0, -2), (0.0, 0), (-0.0, 0), (1e3, 1000),
    (float(INT32_MAX), INT32_MAX), (float(INT32_MIN), INT32_MIN),
])
def test_an_integral_number_is_an_integer_priority(client, plans_url, sent, stored):
    """JSON Schema's integer is a number without a fraction, however it is
    written: 3458.0 is stored, and written back, as 3458."""
    resp = client.post(plans_url, json={**VALID_PLAN, "priority": sent})
    assert resp.status_code == 201, resp.get_json()
    assert b'"priority":%d,' % stored in resp.get_data()
    fetched = client.get(path_of(resp.headers["Location"]))
    assert fetched.get_json()["priority"] == stored
    assert type(fetched.get_json()["priority"]) is int
    patched = client.patch(path_of(resp.headers["Location"]), json={"priority": 7.0})
    assert patched.get_json()["priority"] == 7


@pytest.mark.parametrize("sent", [1.5, -0.5, 1e-9, 2.0**31, -(2.0**31) - 1, 1e300, True, "7"])
def test_a_fraction_a_boolean_or_an_out_of_range_number_is_not_a_priority(client, plans_url,
                                                                          sent):
    assert_problem(client.post(plans_url, json={**VALID_PLAN, "priority": sent}), 422,
                   "priority")


@pytest.mark.parametrize("payload, field", [
    ({"plan_type": "task"}, "title"),
    ({"title": "t"}, "plan_type"),
    ({**VALID_PLAN, "title": ""}, "title"),
    ({**VALID_PLAN, "title": " "}, "title"),
    ({**VALID_PLAN, "title": " \t\n "}, "title"),
    ({**VALID_PLAN, "title": "t" * 501}, "title"),
    ({**VALID_PLAN, "title": None}, "title"),
    ({**VALID_PLAN, "title": 3}, "title"),
    ({**VALID_PLAN, "plan_type": "Task"}, "plan_type"),
    ({**VALID_PLAN, "plan_type": "1task"}, "plan_type"),
    ({**VALID_PLAN, "plan_type": "my task"}, "plan_type"),
    ({**VALID_PLAN, "plan_type": "a" + "b" * 64}, "plan_type"),
    ({**VALID_PLAN, "plan_type": ""}, "plan_type"),
    ({**VALID_PLAN, "plan_type": None}, "plan_type"),
    ({**VALID_PLAN, "plan_type": "task\n"}, "plan_type"),
    ({**VALID_PLAN, "status": "done"}, "status"),
    ({**VALID_PLAN, "status": "PENDING"}, "status"),
    ({**VALID_PLAN, "status": None}, "status"),
    ({**VALID_PLAN, "priority": True}, "priority"),
    ({**VALID_PLAN, "priority": False}, "priority"),
    ({**VALID_PLAN, "priority": 1.5}, "priority"),
    ({**VALID_PLAN, "priority": "3"}, "priority"),
    ({**VALID_PLAN, "priority": INT32_MAX + 1}, "priority"),
    ({**VALID_PLAN, "priority": INT32_MIN - 1}, "priority"),
    ({**VALID_PLAN, "priority": None}, "priority"),
    ({**VALID_PLAN, "description": 5}, "description"),
    ({**VALID_PLAN, "description": ["a"]}, "description"),
    ({**VALID_PLAN, "description": {"a": 1}}, "description"),
    ({**VALID_PLAN, "instructions": 5}, "instructions"),
    ({**VALID_PLAN, "instructions": True}, "instructions"),
    ({**VALID_PLAN, "owner": "me"}, "owner"),
], ids=case_id)
def test_create_plan_rejects_invalid_fields(client, plans_url, payload, field):
    assert_problem(client.post(plans_url, json=payload), 422, field)
    assert client.get(plans_url).headers["X-Total-Count"] == "0"


def test_invalid_status_error_names_the_allowed_statuses(client, plans_url):
    body = assert_problem(client.post(plans_url, json={**VALID_PLAN, "status": "done"}),
                          422, "status")

    message = " ".join(body["errors"]["json"]["status"])
    for status in STATUSES:
        assert status in message


def test_create_plan_reports_every_bad_field_at_once(client, plans_url):
    body = assert_problem(client.post(plans_url, json={"priority": "high", "status": "x"}), 422)

    assert set(body["errors"]["json"]) == {"title", "plan_type", "priority", "status"}


@pytest.mark.parametrize("text", [
    "Réserver un vol ✈️ 🧳",
    "计划 — テスト",
    "'; DROP TABLE instance_plan; --",
    "% _ \\ \"quotes\" <b>",
])
def test_plan_text_is_stored_verbatim(client, plans_url, text):
    resp = client.post(plans_url, json={**VALID_PLAN, "title": text, "description": text,
                                        "instructions": text})

    assert resp.status_code == 201, resp.get_json()
    fetched = client.get(path_of(resp.headers["Location"])).get_json()
    assert (fetched["title"], fetched["description"], fetched["instructions"]) == (text,) * 3


# -- list filters ------------------------------------------------------------

def test_list_plans_filters_by_status_with_exact_totals(client, make_plan, plans_url):
    for status, count in (("pending", 1), ("in_progress", 2), ("completed", 3)):
        for _ in range(count):
            make_plan(status=status)

    for status, count in (("pending", 1), ("in_progress", 2), ("completed", 3), ("failed", 0)):
        resp = client.get(f"{plans_url}?status={status}")
        assert resp.status_code == 200
        assert resp.headers["X-Total-Count"] == str(count)
        assert [row["status"] for row in resp.get_json()] == [status] * count


def test_list_plans_filters_by_plan_type_with_exact_totals(client, make_plan, plans_url):
    for plan_type, count in (("objective", 1), ("task", 3), ("sub.task", 2)):
        for _ in range(count):
            make_plan(plan_type=plan_type)

    for plan_type, count in (("objective", 1), ("task", 3), ("sub.task", 2), ("goal", 0)):
        resp = client.get(f"{plans_url}?plan_type={plan_type}")
        assert resp.status_code == 200
        assert resp.headers["X-Total-Count"] == str(count)
        assert [row["plan_type"] for row in resp.get_json()] == [plan_type] * count


def test_list_plans_combines_filters(client, make_plan, plans_url):
    make_plan(plan_type="task", status="completed")
    make_plan(plan_type="task", status="pending")
    make_plan(plan_type="objective", status="completed")

    resp = client.get(f"{plans_url}?plan_type=task&status=completed")

    assert resp.headers["X-Total-Count"] == "1"
    [row] = resp.get_json()
    assert (row["plan_type"], row["status"]) == ("task", "completed")


@pytest.mark.parametrize("query, field", [
    ("status=done", "status"),
    ("status=PENDING", "status"),
    ("status=", "status"),
    ("plan_type=Bad+Slug", "plan_type"),
    ("plan_type=1task", "plan_type"),
    ("plan_type=", "plan_type"),
    ("plan_type=task%0A", "plan_type"),
    ("limit=1001", "limit"),
    ("limit=-1", "limit"),
    ("limit=all", "limit"),
    ("offset=-1", "offset"),
    ("offset=1.0", "offset"),
    ("priority=3", "priority"),
    ("stauts=pending", "stauts"),
])
def test_list_plans_rejects_bad_query_parameters(client, plans_url, query, field):
    assert_problem(client.get(f"{plans_url}?{query}"), 422, field, where="query")


# -- deleting the instance ---------------------------------------------------

def test_delete_instance_removes_its_plans_and_logs(client, instance, make_instance, make_plan,
                                                    make_log, count_rows):
    other = make_instance(name="other")
    for target in (instance, other):
        for _ in range(2):
            make_plan(instance_id=target["id"])
            make_log(instance_id=target["id"])
    assert count_rows(models.InstancePlan) == 4
    assert count_rows(models.InstanceLog) == 4

    resp = client.delete(f"/api/instances/{instance['id']}")

    assert resp.status_code == 204
    assert count_rows(models.InstancePlan, instance["id"]) == 0
    assert count_rows(models.InstanceLog, instance["id"]) == 0
    assert count_rows(models.InstancePlan) == 2
    assert count_rows(models.InstanceLog) == 2
    assert_problem(client.get(f"/api/instances/{instance['id']}/plans"), 404)
    other_plans = client.get(f"/api/instances/{other['id']}/plans")
    assert other_plans.headers["X-Total-Count"] == "2"
    assert client.get(f"/api/instances/{other['id']}/logs").headers["X-Total-Count"] == "2"


# -- helpers for the item routes ---------------------------------------------

WRITABLE = ("title", "description", "plan_type", "status", "priority", "instructions",
            "parent_id")
READ_ONLY = ("id", "instance_id", "created_at", "updated_at", "started_at", "completed_at")
UPDATES = pytest.mark.parametrize("method", ["PUT", "PATCH"])
ITEM_METHODS = pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
LINK = re.compile(r'<([^>]*)>;\s*rel="([^"]+)"')


def item_url(plan):
    return f"/api/instances/{plan['instance_id']}/plans/{plan['id']}"


def fetch(client, plan):
    resp = client.get(item_url(plan))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def stamp(value):
    return datetime.fromisoformat(value)


def links(resp):
    """The Link header as {rel: path-and-query}."""
    return {rel: path_of(url) for url, rel in LINK.findall(resp.headers.get("Link", ""))}


def titles(resp):
    return [row["title"] for row in resp.get_json()]


def assert_unchanged(client, before):
    """The plan reads back with the same writable fields and server stamps."""
    after = fetch(client, before)
    for name in (*WRITABLE, *READ_ONLY):
        assert after[name] == before[name], name


@pytest.fixture
def family(make_plan):
    """A parent, its child and its grandchild, oldest first."""
    parent = make_plan(title="parent")
    child = make_plan(title="child", parent_id=parent["id"])
    grandchild = make_plan(title="grandchild", parent_id=child["id"])
    return parent, child, grandchild


# -- update (PUT and PATCH) --------------------------------------------------

@pytest.mark.parametrize("changes", [
    {"title": "Renamed"},
    {"status": "failed", "priority": -3},
    {"description": "why", "instructions": "how"},
    {"description": None, "instructions": None},
    {"plan_type": "objective"},
    {"title": "All", "description": "d", "plan_type": "goal", "status": "cancelled",
     "priority": 7, "instructions": "i"},
], ids=case_id)
@UPDATES
def test_update_changes_only_the_sent_fields_and_moves_updated_at(client, make_plan, method,
                                                                  changes):
    before = make_plan(description="old d", instructions="old i", priority=1)

    resp = client.open(item_url(before), method=method, json=changes)

    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.headers["ETag"]
    fetched = fetch(client, before)
    for name in WRITABLE:
        expected = changes.get(name, before[name])
        assert resp.get_json()[name] == expected, name
        assert fetched[name] == expected, name
    assert fetched["id"] == before["id"]
    assert fetched["created_at"] == before["created_at"]
    assert stamp(fetched["updated_at"]) > stamp(before["updated_at"])
    assert fetched["updated_at"] == resp.get_json()["updated_at"]


@UPDATES
def test_update_with_an_empty_body_changes_nothing(client, make_plan, method):
    before = make_plan(status="in_progress", priority=2)

    resp = client.open(item_url(before), method=method, json={})

    assert resp.status_code == 200
    assert resp.get_json()["updated_at"] == before["updated_at"]
    assert_unchanged(client, before)


@UPDATES
def test_update_with_the_values_already_stored_keeps_updated_at(client, make_plan, method):
    parent = make_plan(title="parent")
    before = make_plan(parent_id=parent["id"], status="completed", priority=4,
                       description="d", instructions="i")

    resp = client.open(item_url(before), method=method,
                       json={name: before[name] for name in WRITABLE})

    assert resp.status_code == 200
    assert resp.get_json()["updated_at"] == before["updated_at"]
    assert_unchanged(client, before)


@UPDATES
def test_update_ignores_read_only_fields_in_the_body(client, make_instance, make_plan, method):
    other = make_instance(name="other")
    before = make_plan()
    old = "2000-01-01T00:00:00Z"

    resp = client.open(item_url(before), method=method, json={
        "title": "Renamed", "id": random_id(), "instance_id": other["id"], "created_at": old,
        "updated_at": old, "started_at": old, "completed_at": old})

    assert resp.status_code == 200
    fetched = fetch(client, before)
    assert fetched["title"] == "Renamed"
    assert fetched["id"] == before["id"]
    assert fetched["instance_id"] == before["instance_id"]
    assert fetched["created_at"] == before["created_at"]
    assert not fetched["updated_at"].startswith("2000-")
    assert (fetched["started_at"], fetched["completed_at"]) == (None, None)
    assert client.get(f"/api/instances/{other['id']}/plans").headers["X-Total-Count"] == "0"


@pytest.mark.parametrize("payload, field", [
    ({"owner": "me"}, "owner"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": None}, "title"),
    ({"title": "t" * 501}, "title"),
    ({"plan_type": "Task"}, "plan_type"),
    ({"plan_type": None}, "plan_type"),
    ({"status": "done"}, "status"),
    ({"status": None}, "status"),
    ({"priority": True}, "priority"),
    ({"priority": "3"}, "priority"),
    ({"priority": None}, "priority"),
    ({"priority": INT32_MAX + 1}, "priority"),
    ({"instructions": 5}, "instructions"),
    ({"parent_id": "nope"}, "parent_id"),
    ({"parent_id": 5}, "parent_id"),
    ({"parent_id": UNKNOWN_ID}, "parent_id"),
], ids=case_id)
@UPDATES
def test_a_rejected_update_names_the_field_and_changes_nothing(client, make_plan, method,
                                                               payload, field):
    before = make_plan(description="d")

    resp = client.open(item_url(before), method=method,
                       json={"description": "changed", **payload})

    assert_problem(resp, 422, field)
    assert_unchanged(client, before)


# -- item routes: unknown ids, other instances, upper case -------------------

@ITEM_METHODS
def test_a_plan_id_that_names_nothing_is_404(client, make_plan, plans_url, method):
    make_plan()

    resp = client.open(f"{plans_url}/{random_id()}", method=method,
                       json={"title": "x"} if method in ("PUT", "PATCH") else None)

    assert_problem(resp, 404)
    assert client.get(plans_url).headers["X-Total-Count"] == "1"


@ITEM_METHODS
def test_a_plan_reached_through_another_instance_is_404_and_untouched(client, make_instance,
                                                                      make_plan, method):
    other = make_instance(name="other")
    plan = make_plan()

    resp = client.open(f"/api/instances/{other['id']}/plans/{plan['id']}", method=method,
                       json={"title": "x"} if method in ("PUT", "PATCH") else None)

    assert_problem(resp, 404)
    assert_unchanged(client, plan)


@pytest.mark.parametrize("method, status", [("PUT", 200), ("PATCH", 200), ("DELETE", 204)])
def test_item_writes_accept_upper_case_path_ids(client, make_plan, method, status):
    plan = make_plan()
    url = f"/api/instances/{plan['instance_id'].upper()}/plans/{plan['id'].upper()}"

    resp = client.open(url, method=method,
                       json={"title": "Renamed"} if method != "DELETE" else None)

    assert resp.status_code == status
    if method == "DELETE":
        assert_problem(client.get(item_url(plan)), 404)
    else:
        assert resp.get_json()["id"] == plan["id"]
        assert fetch(client, plan)["title"] == "Renamed"


# -- delete ------------------------------------------------------------------

def test_delete_plan_answers_204_without_body_or_type_and_the_plan_is_gone(
        client, make_plan, plans_url):
    plan = make_plan()
    kept = make_plan(title="kept")

    resp = client.delete(item_url(plan))

    assert resp.status_code == 204
    assert resp.get_data() == b""
    assert "Content-Type" not in resp.headers
    assert_problem(client.get(item_url(plan)), 404)
    assert_problem(client.delete(item_url(plan)), 404)
    listed = client.get(plans_url)
    assert listed.headers["X-Total-Count"] == "1"
    assert [row["id"] for row in listed.get_json()] == [kept["id"]]


def test_deleting_a_parent_detaches_its_children_and_keeps_grandchildren(client, family,
                                                                         make_plan):
    parent, child, grandchild = family
    second_child = make_plan(title="second child", parent_id=parent["id"])
    bystander = make_plan(title="bystander")

    assert client.delete(item_url(parent)).status_code == 204

    assert_problem(client.get(item_url(parent)), 404)
    for before in (child, second_child):
        after = fetch(client, before)
        assert after["parent_id"] is None
        assert stamp(after["updated_at"]) > stamp(before["updated_at"])
        assert after["title"] == before["title"]
    assert fetch(client, grandchild)["parent_id"] == child["id"]
    assert fetch(client, grandchild)["updated_at"] == grandchild["updated_at"]
    assert_unchanged(client, bystander)


def test_deleting_an_instance_removes_its_whole_plan_tree(client, instance, make_instance,
                                                          make_plan, family, count_rows):
    other = make_instance(name="other")
    theirs = make_plan(instance_id=other["id"], title="their parent")
    their_child = make_plan(instance_id=other["id"], parent_id=theirs["id"])

    assert client.delete(f"/api/instances/{instance['id']}").status_code == 204

    assert count_rows(models.InstancePlan, instance["id"]) == 0
    assert count_rows(models.InstancePlan) == 2
    for plan in family:
        assert_problem(client.get(item_url(plan)), 404)
    assert fetch(client, their_child)["parent_id"] == theirs["id"]


# -- parent_id ---------------------------------------------------------------

def test_create_plan_stores_its_parent_and_defaults_to_top_level(client, make_plan, plans_url):
    parent = make_plan(title="parent")

    child = client.post(plans_url, json={**VALID_PLAN, "parent_id": parent["id"]})
    explicit_null = client.post(plans_url, json={**VALID_PLAN, "parent_id": None})

    assert child.status_code == 201
    assert child.get_json()["parent_id"] == parent["id"]
    assert fetch(client, child.get_json())["parent_id"] == parent["id"]
    assert explicit_null.status_code == 201
    assert explicit_null.get_json()["parent_id"] is None
    assert parent["parent_id"] is None
    assert fetch(client, parent)["parent_id"] is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_an_upper_case_parent_id_is_answered_canonical_lower_case(client, make_plan, plans_url,
                                                                  method):
    parent = make_plan(title="parent")
    body = {"parent_id": parent["id"].upper()}
    if method == "POST":
        resp = client.post(plans_url, json={**VALID_PLAN, **body})
    else:
        resp = client.open(item_url(make_plan()), method=method, json=body)

    assert resp.status_code == (201 if method == "POST" else 200)
    assert resp.get_json()["parent_id"] == parent["id"]
    assert fetch(client, resp.get_json())["parent_id"] == parent["id"]


@pytest.mark.parametrize("kind", ["unknown", "other instance", "malformed", "number"])
def test_create_plan_rejects_a_parent_that_is_no_plan_of_this_instance(
        client, make_instance, make_plan, plans_url, kind):
    other = make_instance(name="other")
    parent_id = {
        "unknown": random_id(),
        "other instance": make_plan(instance_id=other["id"])["id"],
        "malformed": "nope",
        "number": 5,
    }[kind]

    resp = client.post(plans_url, json={**VALID_PLAN, "parent_id": parent_id})

    assert_problem(resp, 422, "parent_id")
    assert client.get(plans_url).headers["X-Total-Count"] == "0"


@UPDATES
def test_update_rejects_a_parent_from_another_instance(client, make_instance, make_plan,
                                                       method):
    other = make_instance(name="other")
    theirs = make_plan(instance_id=other["id"])
    mine = make_plan()

    resp = client.open(item_url(mine), method=method, json={"parent_id": theirs["id"]})

    assert_problem(resp, 422, "parent_id")
    assert_unchanged(client, mine)


@pytest.mark.parametrize("target", [0, 1, 2], ids=["itself", "its child", "its grandchild"])
@UPDATES
def test_a_plan_cannot_move_under_itself_or_its_descendants(client, family, method, target):
    parent = family[0]

    resp = client.open(item_url(parent), method=method,
                       json={"parent_id": family[target]["id"]})

    assert_problem(resp, 422, "parent_id")
    for plan in family:
        assert_unchanged(client, plan)


@UPDATES
def test_a_plan_can_move_to_another_parent_and_be_detached_with_null(client, family, make_plan,
                                                                     method):
    _, child, grandchild = family
    other = make_plan(title="other parent")

    moved = client.open(item_url(grandchild), method=method, json={"parent_id": other["id"]})
    assert moved.status_code == 200
    assert fetch(client, grandchild)["parent_id"] == other["id"]

    detached = client.open(item_url(child), method=method, json={"parent_id": None})
    assert detached.status_code == 200
    assert detached.get_json()["parent_id"] is None
    after = fetch(client, child)
    assert after["parent_id"] is None
    assert stamp(after["updated_at"]) > stamp(child["updated_at"])


# -- parent_id list filter ---------------------------------------------------

def test_parent_id_filter_lists_exactly_the_children_of_a_plan(client, family, make_plan,
                                                               plans_url):
    parent, child, grandchild = family
    second_child = make_plan(title="second child", parent_id=parent["id"])
    make_plan(title="top level")

    for plan, expected in ((parent, [second_child, child]), (child, [grandchild]),
                           (grandchild, [])):
        resp = client.get(f"{plans_url}?parent_id={plan['id']}")
        assert resp.status_code == 200
        assert resp.headers["X-Total-Count"] == str(len(expected))
        assert [row["id"] for row in resp.get_json()] == [row["id"] for row in expected]

    upper = client.get(f"{plans_url}?parent_id={parent['id'].upper()}")
    assert upper.headers["X-Total-Count"] == "2"


@pytest.mark.parametrize("value", ["nope", "5", "", "null"])
def test_a_malformed_parent_id_filter_is_422(client, plans_url, value):
    assert_problem(client.get(f"{plans_url}?parent_id={value}"), 422, "parent_id",
                   where="query")


# -- started_at and completed_at ---------------------------------------------

@pytest.mark.parametrize("status, started, completed", [
    ("pending", False, False),
    ("in_progress", True, False),
    ("completed", False, True),
    ("failed", False, True),
    ("cancelled", False, True),
])
def test_a_new_plan_has_the_lifecycle_stamps_of_its_status(client, make_plan, status, started,
                                                           completed):
    plan = make_plan(status=status)

    assert plan["started_at"] == (plan["created_at"] if started else None)
    assert plan["completed_at"] == (plan["created_at"] if completed else None)
    fetched = fetch(client, plan)
    assert (fetched["started_at"], fetched["completed_at"]) == (
        plan["started_at"], plan["completed_at"])


@UPDATES
def test_started_at_is_the_first_move_to_in_progress_and_never_changes(client, make_plan,
                                                                       method):
    plan = make_plan()

    def move(status):
        resp = client.open(item_url(plan), method=method, json={"status": status})
        assert resp.status_code == 200
        return resp.get_json()

    first = move("in_progress")
    assert first["started_at"] == first["updated_at"]
    assert stamp(first["started_at"]) > stamp(plan["created_at"])
    for status in ("pending", "in_progress", "completed", "pending", "in_progress"):
        moved = move(status)
        assert moved["started_at"] == first["started_at"], status
    assert fetch(client, plan)["started_at"] == first["started_at"]


@pytest.mark.parametrize("first, then", [
    ("completed", "failed"),
    ("failed", "cancelled"),
    ("cancelled", "completed"),
    ("in_progress", "completed"),
    ("pending", "cancelled"),
])
@UPDATES
def test_completed_at_is_the_time_of_the_move_to_a_final_status(client, make_plan, method,
                                                                first, then):
    plan = make_plan(status=first)

    resp = client.open(item_url(plan), method=method, json={"status": then})

    assert resp.status_code == 200
    moved = resp.get_json()
    assert moved["completed_at"] == moved["updated_at"]
    assert stamp(moved["completed_at"]) > stamp(plan["created_at"])
    assert fetch(client, plan)["completed_at"] == moved["completed_at"]


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled"])
@pytest.mark.parametrize("reopened", ["pending", "in_progress"])
def test_reopening_a_finished_plan_clears_completed_at(client, make_plan, final, reopened):
    plan = make_plan(status=final)
    assert plan["completed_at"] is not None

    resp = client.patch(item_url(plan), json={"status": reopened})

    assert resp.status_code == 200
    assert resp.get_json()["completed_at"] is None
    fetched = fetch(client, plan)
    assert fetched["completed_at"] is None
    assert fetched["status"] == reopened


@pytest.mark.parametrize("changes", [
    {"title": "Renamed", "priority": 9},
    {"status": "completed"},
    {"parent_id": None},
], ids=case_id)
def test_an_update_that_does_not_change_status_keeps_the_stamps(client, make_plan, changes):
    plan = make_plan(status="in_progress")
    plan = client.patch(item_url(plan), json={"status": "completed"}).get_json()
    assert plan["started_at"] and plan["completed_at"]

    resp = client.patch(item_url(plan), json=changes)

    assert resp.status_code == 200
    fetched = fetch(client, plan)
    assert fetched["started_at"] == plan["started_at"]
    assert fetched["completed_at"] == plan["completed_at"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_lifecycle_stamps_sent_in_a_body_are_ignored(client, make_plan, plans_url, method):
    sent = {"started_at": "2000-01-01T00:00:00Z", "completed_at": "2000-01-02T00:00:00Z"}
    if method == "POST":
        resp = client.post(plans_url, json={**VALID_PLAN, **sent})
    else:
        resp = client.open(item_url(make_plan()), method=method, json={"title": "T", **sent})

    assert resp.status_code == (201 if method == "POST" else 200)
    fetched = fetch(client, resp.get_json())
    assert (fetched["started_at"], fetched["completed_at"]) == (None, None)


# -- sort --------------------------------------------------------------------

def test_sort_by_descending_priority_breaks_ties_newest_first(client, make_plan, plans_url):
    for n, priority in enumerate((1, 3, 1, 2, 3)):
        make_plan(title=f"p{priority} #{n}", priority=priority)

    resp = client.get(f"{plans_url}?sort=-priority")

    assert resp.status_code == 200
    assert resp.headers["X-Total-Count"] == "5"
    assert titles(resp) == ["p3 #4", "p3 #1", "p2 #3", "p1 #2", "p1 #0"]


@pytest.mark.parametrize("sort, expected", [
    ("status", list(STATUSES)),
    ("-status", list(STATUSES[::-1])),
])
def test_sort_by_status_follows_the_lifecycle_not_the_alphabet(client, make_plan, plans_url,
                                                               sort, expected):
    for status in ("failed", "pending", "cancelled", "completed", "in_progress"):
        make_plan(status=status)

    resp = client.get(f"{plans_url}?sort={sort}")

    assert resp.status_code == 200
    assert [row["status"] for row in resp.get_json()] == expected


def test_sort_by_title_is_by_code_point(client, make_plan, plans_url):
    names = ["b", "É", "a", "Z", "é", "10", "9", "B", "ä"]
    for name in names:
        make_plan(title=name)

    assert titles(client.get(f"{plans_url}?sort=title")) == sorted(names)
    assert titles(client.get(f"{plans_url}?sort=-title")) == sorted(names, reverse=True)


def test_sort_by_several_keys_applies_them_in_order(client, make_plan, plans_url):
    for title, status, priority in (("a", "failed", 1), ("b", "pending", 1),
                                    ("c", "failed", 5), ("d", "pending", 2),
                                    ("e", "pending", 2)):
        make_plan(title=title, status=status, priority=priority)

    resp = client.get(f"{plans_url}?sort=status,-priority")

    assert resp.status_code == 200
    assert titles(resp) == ["e", "d", "b", "c", "a"]


def test_sort_by_timestamps_in_either_direction(client, make_plan, plans_url):
    made = [make_plan(title=f"t{n}") for n in range(3)]
    assert client.patch(item_url(made[0]), json={"priority": 1}).status_code == 200

    assert titles(client.get(f"{plans_url}?sort=created_at")) == ["t0", "t1", "t2"]
    assert titles(client.get(f"{plans_url}?sort=-created_at")) == ["t2", "t1", "t0"]
    assert titles(client.get(f"{plans_url}?sort=-updated_at")) == ["t0", "t2", "t1"]
    assert titles(client.get(f"{plans_url}?sort=updated_at")) == ["t1", "t2", "t0"]


@pytest.mark.parametrize("value", ["bogus", "-name", "", "priority,bogus", "--priority",
                                   "+priority", "Priority"])
def test_an_unknown_sort_field_is_422(client, make_plan, plans_url, value):
    make_plan()
    assert_problem(client.get(f"{plans_url}?sort={value}"), 422, "sort", where="query")


def test_paging_links_keep_the_sort(client, make_plan, plans_url):
    for priority in (2, 5, 1, 4):
        make_plan(title=f"p{priority}", priority=priority)

    resp = client.get(f"{plans_url}?sort=-priority&limit=1&offset=1")

    assert titles(resp) == ["p4"]
    pages = links(resp)
    assert set(pages) == {"next", "prev"}
    for rel, offset, expected in (("next", "2", ["p2"]), ("prev", "0", ["p5"])):
        query = parse_qs(urlsplit(pages[rel]).query)
        assert query == {"sort": ["-priority"], "limit": ["1"], "offset": [offset]}
        assert titles(client.get(pages[rel])) == expected


# -- status lists and repeated parameters ------------------------------------

def test_status_filter_takes_a_comma_list(client, make_plan, plans_url):
    for status, count in (("pending", 2), ("failed", 1), ("completed", 3)):
        for _ in range(count):
            make_plan(status=status)

    resp = client.get(f"{plans_url}?status=pending,failed")

    assert resp.status_code == 200
    assert resp.headers["X-Total-Count"] == "3"
    assert sorted(row["status"] for row in resp.get_json()) == ["failed", "pending", "pending"]


@pytest.mark.parametrize("query, field", [
    ("status=pending,done", "status"),
    ("status=pending,", "status"),
    ("status=pending,PENDING", "status"),
    ("status=pending&status=failed", "status"),
    ("sort=title&sort=-title", "sort"),
    (f"parent_id={uuid.UUID(int=1)}&parent_id={uuid.UUID(int=2)}", "parent_id"),
])
def test_bad_status_lists_and_repeated_parameters_are_422(client, plans_url, query, field):
    assert_problem(client.get(f"{plans_url}?{query}"), 422, field, where="query")


# -- ETag and preconditions --------------------------------------------------

def test_get_plan_has_an_etag_that_if_none_match_answers_with_304(client, make_plan):
    plan = make_plan()

    resp = client.get(item_url(plan))
    etag = resp.headers["ETag"]

    assert resp.status_code == 200
    assert etag
    cached = client.get(item_url(plan), headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.get_data() == b""
    assert client.get(item_url(plan), headers={"If-None-Match": '"other"'}).status_code == 200


@UPDATES
def test_update_with_a_current_etag_succeeds_and_with_a_stale_one_is_412(client, make_plan,
                                                                         method):
    plan = make_plan()
    etag = client.get(item_url(plan)).headers["ETag"]

    first = client.open(item_url(plan), method=method, json={"title": "First"},
                        headers={"If-Match": etag})
    assert first.status_code == 200
    new_etag = first.headers["ETag"]
    assert new_etag and new_etag != etag
    assert client.get(item_url(plan)).headers["ETag"] == new_etag
    changed = fetch(client, plan)

    stale = client.open(item_url(plan), method=method, json={"title": "Second"},
                        headers={"If-Match": etag})

    assert_problem(stale, 412)
    assert_unchanged(client, changed)
    assert fetch(client, plan)["title"] == "First"


def test_delete_with_a_stale_etag_is_412_and_keeps_the_plan(client, make_plan):
    plan = make_plan()
    stale = client.get(item_url(plan)).headers["ETag"]
    assert client.patch(item_url(plan), json={"priority": 3}).status_code == 200
    current = client.get(item_url(plan)).headers["ETag"]

    assert_problem(client.delete(item_url(plan), headers={"If-Match": stale}), 412)
    assert fetch(client, plan)["priority"] == 3

    assert client.delete(item_url(plan), headers={"If-Match": current}).status_code == 204
    assert_problem(client.get(item_url(plan)), 404)
