"""How deep plans nest (issue 22): a plan has at most MAX_ANCESTORS
ancestors, more is 422 on parent_id, a cycle is still refused however deep
the tree, and the check is one statement whatever the depth."""
import pytest

import models
from conftest import assert_problem
from models import MAX_ANCESTORS

UPDATES = pytest.mark.parametrize("method", ["PUT", "PATCH"])


def plan_url(plan):
    return f"/api/instances/{plan['instance_id']}/plans/{plan['id']}"


@pytest.fixture
def chain(make_plan):
    """A root and MAX_ANCESTORS plans below it, each the child of the one
    before: the last has exactly MAX_ANCESTORS ancestors."""
    plans = [make_plan(title="level 0")]
    for level in range(1, MAX_ANCESTORS + 1):
        plans.append(make_plan(title=f"level {level}", parent_id=plans[-1]["id"]))
    return plans


def total(client, plan):
    resp = client.get(f"/api/instances/{plan['instance_id']}/plans?limit=0")
    return int(resp.headers["X-Total-Count"])


def test_a_plan_may_have_the_most_ancestors_and_not_one_more(client, chain):
    assert MAX_ANCESTORS == 100
    deepest = chain[-1]
    assert client.get(plan_url(deepest)).get_json()["parent_id"] == chain[-2]["id"]
    before = total(client, deepest)

    resp = client.post(f"/api/instances/{deepest['instance_id']}/plans",
                       json={"title": "too deep", "plan_type": "task",
                             "parent_id": deepest["id"]})

    body = assert_problem(resp, 422, "parent_id")
    assert "at most 100 ancestors" in body["errors"]["json"]["parent_id"][0]
    assert total(client, deepest) == before


@UPDATES
def test_moving_a_subtree_may_not_make_its_plans_too_deep(client, chain, make_plan, method):
    top = make_plan(title="top")
    below = make_plan(title="below", parent_id=top["id"])
    # Under chain[-2] (99 ancestors), `top` would have 100 and `below` 101.
    resp = client.open(plan_url(top), method=method, json={"parent_id": chain[-2]["id"]})
    assert_problem(resp, 422, "parent_id")
    assert client.get(plan_url(top)).get_json()["parent_id"] is None

    # One level higher, both fit: `below` then has exactly 100.
    moved = client.open(plan_url(top), method=method, json={"parent_id": chain[-3]["id"]})
    assert moved.status_code == 200
    assert client.get(plan_url(below)).get_json()["parent_id"] == top["id"]


@UPDATES
@pytest.mark.parametrize("under", [-1, 50, 1], ids=["the deepest", "the middle", "its child"])
def test_a_plan_cannot_move_under_its_own_descendant_however_deep(client, chain, method,
                                                                  under):
    root = chain[0]
    resp = client.open(plan_url(root), method=method, json={"parent_id": chain[under]["id"]})
    body = assert_problem(resp, 422, "parent_id")
    assert "own parent or ancestor" in body["errors"]["json"]["parent_id"][0]
    assert client.get(plan_url(root)).get_json()["parent_id"] is None


def test_the_parent_check_is_one_statement_however_deep(app, client, chain, monkeypatch):
    from routes.plans import check_parent

    statements = []
    database = models.db.obj
    execute = database.execute_sql

    def counted(sql, params=None, *args, **kwargs):
        statements.append(sql)
        return execute(sql, params, *args, **kwargs)

    monkeypatch.setattr(database, "execute_sql", counted)
    instance_id = chain[0]["instance_id"]
    # A new plan under the deepest and under a shallow one; the root moved
    # under the deepest (a cycle 100 levels down); the deepest moved up one.
    cases = ((chain[-1], None), (chain[1], None), (chain[-1], chain[0]), (chain[-3], chain[-1]))
    with app.test_request_context():
        for parent, plan in cases:
            moved = plan and models.InstancePlan.get_by_id(plan["id"])
            del statements[:]
            try:
                check_parent(instance_id, parent["id"], moved)
            except Exception as refused:   # noqa: BLE001 -- a 422 is an answer too
                assert getattr(refused, "code", None) == 422
            assert len(statements) == 1, statements
