"""Every list query shape reads through an index: EXPLAIN QUERY PLAN of each
statement a list request runs (the page, its count, the cursor lookup) must
not scan a table. A scan costs time in proportion to the table, which is
what makes a list slow at a million rows while it is fast in a test."""
import logging
import re

import pytest

import models
from conftest import SITE, USER

pytestmark = pytest.mark.sqlite_only  # SQLite's EXPLAIN QUERY PLAN

AGENT = "0f8fad5b-d9cb-469f-a165-70867728950e"
SINCE, UNTIL = "2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z"

INSTANCE_SHAPES = [
    "", "site_id={site}", "user_id={user}", "agent_id={agent}", "status=running",
    "status=running,paused", "instance_type=ubuntu", "instance_type=ubuntu,windows", "q=box",
    "site_id={site}&status=running", "site_id={site}&status=running,error",
    "sort=created_at", "sort=-created_at", "sort=name", "sort=-updated_at", "sort=status",
    "site_id={site}&sort=name", "status=running&sort=-updated_at", "offset=1&limit=1",
]
LOG_SHAPES = [
    "", "log_type=agent_action", "level=error", "level=warn,error", "min_level=warn",
    "since={since}", "until={until}", "since={since}&until={until}", "after={log}",
    "after={log}&level=info", "after={log}&min_level=warn&log_type=agent_action",
    "sort=created_at", "sort=level", "sort=-level,created_at", "log_type=agent_action&sort=level",
    "offset=1&limit=1",
]
PLAN_SHAPES = [
    "", "status=pending", "status=pending,completed", "plan_type=task", "parent_id={plan}",
    "sort=priority", "sort=-title", "sort=status", "sort=-updated_at", "sort=created_at",
    "status=pending&sort=priority",
]

# A line of SQLite's plan that reads a whole table: "SCAN t1" (queries name
# their table t1), but not "SCAN t1 USING INDEX ..." (an index read in
# order, which LIMIT stops), "SCAN CONSTANT ROW", nor "SCAN row": the page's
# rows, at most `limit` of them, read as they come to build its JSON
# (storage.reads.json_rows).
TABLE_SCAN = re.compile(r"^SCAN (?!row$)\w+$")


@pytest.fixture
def dataset(client, make_instance):
    boxes = [make_instance(status=status, instance_type=kind, agent_id=AGENT)
             for status, kind in (("running", "ubuntu"), ("paused", "windows"))]
    box = boxes[0]["id"]
    logs = client.post(f"/api/instances/{box}/logs", json=[
        {"log_type": "agent_action", "level": level, "message": level}
        for level in models.LOG_LEVELS]).get_json()
    plan = client.post(f"/api/instances/{box}/plans",
                       json={"title": "Root", "plan_type": "goal"}).get_json()
    client.post(f"/api/instances/{box}/plans",
                json={"title": "Leaf", "plan_type": "task", "parent_id": plan["id"]})
    return {"box": box, "log": logs[1]["id"], "plan": plan["id"], "site": SITE, "user": USER,
            "agent": AGENT, "since": SINCE, "until": UNTIL}


class Statements(logging.Handler):
    """The SELECTs peewee runs (it logs each with its parameters)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def emit(self, record):
        if isinstance(record.msg, tuple) and record.msg[0].startswith("SELECT"):
            self.seen.append(record.msg)


def plans_of(client, url):
    statements, peewee_log = Statements(), logging.getLogger("peewee")
    peewee_log.addHandler(statements)
    peewee_log.setLevel(logging.DEBUG)
    try:
        resp = client.get(url)
    finally:
        peewee_log.removeHandler(statements)
        peewee_log.setLevel(logging.NOTSET)
    assert resp.status_code == 200, (url, resp.get_json())
    return [(sql, [row[3] for row in models.db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params)])
            for sql, params in statements.seen]


@pytest.mark.parametrize("path, shapes", [
    ("/api/instances", INSTANCE_SHAPES),
    ("/api/instances/{box}/logs", LOG_SHAPES),
    ("/api/instances/{box}/plans", PLAN_SHAPES),
], ids=["instances", "logs", "plans"])
def test_no_list_query_scans_a_table(client, dataset, path, shapes):
    scans = {}
    for shape in shapes:
        url = f"{path}?{shape}".format(**dataset)
        plans = plans_of(client, url)
        assert plans, url
        for sql, plan in plans:
            if any(TABLE_SCAN.match(line) for line in plan):
                scans[url] = (sql, plan)
    assert scans == {}
