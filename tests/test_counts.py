"""GET /api/instances/counts (CONTRACT 3.2): totals and counts by field for
the instance list's filters, agreeing with the list's X-Total-Count, on
whichever engine the suite runs on."""
import os
from collections import Counter
from urllib.parse import urlencode

import pytest

import models
from app import create_app
from conftest import SITE, USER, assert_problem, close_connections, database_for, random_id

URL = "/api/instances/counts"
OTHER_SITE = "0f8e7d6c-5b4a-4c3d-9e2f-1a0b9c8d7e6f"
AGENT = "3c4d5e6f-7a8b-4c9d-8e0f-a1b2c3d4e5f6"
OTHER_AGENT = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"


@pytest.fixture
def fleet(make_instance):
    """Ten instances over two sites, with statuses, types, agents and labels."""
    rows = []
    for n in range(10):
        rows.append(make_instance(
            name=f"box {n}", site_id=(SITE, OTHER_SITE)[n % 3 == 0],
            status=("running", "error", "running", "paused")[n % 4],
            instance_type=("ubuntu", "browser")[n % 2],
            agent_id=(None, AGENT, OTHER_AGENT)[n % 3],
            labels={**({"env": ("prod", "dev", "prod")[n % 3]} if n != 4 else {}),
                    "team": f"t{n % 4}"}))
    return rows


def counts(client, **query):
    resp = client.get(f"{URL}?{urlencode(query)}")
    assert resp.status_code == 200, resp.get_json()
    assert resp.mimetype == "application/json"
    return resp.get_json()


def test_without_by_the_answer_is_the_total_alone(client, fleet):
    assert counts(client) == {"total": 10, "by": {}}
    assert counts(client, site_id=SITE) == {"total": 6, "by": {}}


def test_an_empty_database_counts_zero_of_every_closed_member(client):
    answer = counts(client, by="status,instance_type,site_id,label:env")
    assert answer["total"] == 0
    assert answer["by"]["status"] == dict.fromkeys(models.INSTANCE_STATUSES, 0)
    assert answer["by"]["instance_type"] == dict.fromkeys(models.INSTANCE_TYPES, 0)
    assert answer["by"]["site_id"] == {} and answer["by"]["label:env"] == {}


def test_closed_sets_list_every_member_in_their_order_zeros_included(client, fleet):
    answer = counts(client, by="status,instance_type")
    assert list(answer["by"]["status"].items()) == [
        ("pending", 0), ("starting", 0), ("running", 5), ("paused", 2), ("stopping", 0),
        ("stopped", 0), ("terminated", 0), ("error", 3)]
    assert list(answer["by"]["instance_type"].items()) == [
        ("ubuntu", 5), ("browser", 5), ("windows", 0)]
    assert answer["total"] == 10


def test_open_fields_list_the_values_present_most_frequent_first(client, fleet):
    answer = counts(client, by="site_id,agent_id,user_id,label:env,label:team")["by"]
    assert list(answer["site_id"].items()) == [(SITE, 6), (OTHER_SITE, 4)]
    # Instances without an agent, or without the label, are not listed.
    assert list(answer["agent_id"].items()) == [(AGENT, 3), (OTHER_AGENT, 3)]
    assert list(answer["user_id"].items()) == [(USER, 10)]
    assert list(answer["label:env"].items()) == [("prod", 7), ("dev", 2)]
    # Ties are ordered by value.
    assert list(answer["label:team"].items()) == [("t0", 3), ("t1", 3), ("t2", 2), ("t3", 2)]


def test_ties_are_ordered_by_code_point(client, make_instance):
    for value in ("b", "B", "a", "A", "10", "9", "", "a.b", "a-b"):
        make_instance(labels={"k": value})
    answer = counts(client, by="label:k")["by"]["label:k"]
    assert list(answer) == sorted(["b", "B", "a", "A", "10", "9", "", "a.b", "a-b"])


def test_open_fields_list_at_most_100_values(client, make_instance):
    users = sorted(random_id() for _ in range(102))
    for n, user in enumerate(users):
        make_instance(user_id=user, labels={"n": f"v{n:03d}"})
    make_instance(user_id=users[-1])
    answer = counts(client, by="user_id,label:n")
    assert answer["total"] == 103
    listed = list(answer["by"]["user_id"].items())
    assert len(listed) == 100
    assert listed[0] == (users[-1], 2)
    assert [user for user, _ in listed[1:]] == users[:99]
    assert list(answer["by"]["label:n"]) == [f"v{n:03d}" for n in range(100)]


FILTERS = [
    {}, {"site_id": SITE}, {"status": "running"}, {"status": "running,error"},
    {"instance_type": "browser"}, {"agent_id": AGENT}, {"user_id": USER}, {"q": "BOX 1"},
    {"q": "x"}, {"label": "env=prod"}, {"label": "env"}, {"label": "!env"},
    {"label": "env!=prod"}, {"label": "env=prod,team=t0"},
    {"site_id": SITE, "status": "running", "label": "team"},
    {"site_id": OTHER_SITE, "label": "env=dev", "q": "box"},
    {"agent_id": OTHER_AGENT, "instance_type": "ubuntu,browser", "label": "!team"},
]


@pytest.mark.parametrize("query", FILTERS, ids=lambda query: urlencode(query) or "none")
def test_counts_agree_with_the_list_for_the_same_filters(client, fleet, query):
    listed = client.get(f"/api/instances?{urlencode({**query, 'limit': 1000})}")
    assert listed.status_code == 200
    rows = listed.get_json()
    answer = counts(client, **query, by="status,instance_type,site_id,agent_id,label:env")
    assert answer["total"] == int(listed.headers["X-Total-Count"]) == len(rows)
    by = answer["by"]
    assert by["status"] == {status: Counter(row["status"] for row in rows)[status]
                            for status in models.INSTANCE_STATUSES}
    assert by["instance_type"] == {kind: Counter(row["instance_type"] for row in rows)[kind]
                                   for kind in models.INSTANCE_TYPES}
    assert by["site_id"] == dict(Counter(row["site_id"] for row in rows))
    assert by["agent_id"] == dict(Counter(row["agent_id"] for row in rows if row["agent_id"]))
    assert by["label:env"] == dict(Counter(row["labels"]["env"] for row in rows
                                           if "env" in row["labels"]))
    # A total without a closed set in `by` is counted on its own.
    assert counts(client, **query)["total"] == answer["total"]


def test_counts_follow_writes(client, fleet):
    client.patch(f"/api/instances/{fleet[0]['id']}",
                 json={"labels": {"env": "dev"}, "status": "stopped"})
    client.delete(f"/api/instances/{fleet[2]['id']}")
    answer = counts(client, by="status,label:env")
    assert answer["total"] == 9
    assert answer["by"]["label:env"] == {"prod": 5, "dev": 3}
    assert answer["by"]["status"]["stopped"] == 1


@pytest.mark.parametrize("query, field", [
    ("by=", "by"), ("by=bogus", "by"), ("by=status,", "by"), ("by=,status", "by"),
    ("by=Status", "by"), ("by=label:", "by"), ("by=label:Env", "by"), ("by=label", "by"),
    ("by=label:env=prod", "by"), ("by=name", "by"), ("by=created_at", "by"),
    ("by=" + ",".join(f"label:k{n}" for n in range(17)), "by"),
    ("limit=10", "limit"), ("offset=0", "offset"), ("sort=name", "sort"), ("after=x", "after"),
    ("colour=red", "colour"), ("by=status&by=site_id", "by"), ("status=bogus", "status"),
    ("site_id=nope", "site_id"), ("label=env==prod", "label"), ("q=", "q"),
])
def test_bad_counts_queries_are_422_naming_the_parameter(client, fleet, query, field):
    assert_problem(client.get(f"{URL}?{query}"), 422, field, where="query")


def test_a_field_given_twice_in_by_is_counted_once(client, fleet):
    assert list(counts(client, by="status,label:env,status,label:env")["by"]) == [
        "status", "label:env"]


def test_counts_is_its_own_route_and_not_an_instance_id(client, fleet):
    assert client.get(URL).status_code == 200
    assert_problem(client.get("/api/instances/not-a-uuid"), 404)
    assert_problem(client.get("/api/instances/count"), 404)
    resp = client.post(URL, json={})
    assert_problem(resp, 405)
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_counts_are_etagged_like_every_single_response(client, fleet):
    first = client.get(f"{URL}?by=status")
    again = client.get(f"{URL}?by=status", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    client.patch(f"/api/instances/{fleet[0]['id']}", json={"status": "stopped"})
    changed = client.get(f"{URL}?by=status", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200


def test_counts_need_a_token_when_tokens_are_configured(tmp_path, monkeypatch):
    for name in [name for name in os.environ if name.startswith("INSTANCES_")]:
        monkeypatch.delenv(name)
    close_connections()
    app = create_app({"TESTING": True, "API_TOKENS": "tok-one",
                      **database_for(tmp_path / "t.db")})
    try:
        guarded = app.test_client()
        resp = guarded.get(f"{URL}?by=status")
        assert_problem(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        ok = guarded.get(f"{URL}?by=status", headers={"Authorization": "Bearer tok-one"})
        assert ok.status_code == 200
        assert ok.get_json()["total"] == 0
    finally:
        close_connections()
