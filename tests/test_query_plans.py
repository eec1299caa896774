"""Every list query shape reads through an index: EXPLAIN QUERY PLAN of each
statement a list request runs (the page, its count, the cursor lookup) must
not scan a table. A scan costs time in proportion to the table, which is
what makes a list slow at a million rows while it is fast in a test.

On PostgreSQL (CONTRACT 3.1: every label selector through an index, on both
engines), each statement is explained with sequential scans priced out of
reach: a Seq Scan of a table then means that no index can answer it; and
the label and name filters must read their own GIN indexes."""
import json
import logging
import re

import pytest

import models
from conftest import POSTGRES_URL, SITE, USER

sqlite_only = pytest.mark.sqlite_only  # SQLite's EXPLAIN QUERY PLAN
postgres_only = pytest.mark.skipif(not POSTGRES_URL, reason="needs INSTANCES_TEST_DATABASE_URL")

AGENT = "0f8fad5b-d9cb-469f-a165-70867728950e"
SINCE, UNTIL = "2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z"

INSTANCE_SHAPES = [
    "", "site_id={site}", "user_id={user}", "agent_id={agent}", "status=running",
    "status=running,paused", "instance_type=ubuntu", "instance_type=ubuntu,windows", "q=box",
    "site_id={site}&status=running", "site_id={site}&status=running,error",
    "sort=created_at", "sort=-created_at", "sort=name", "sort=-updated_at", "sort=status",
    "site_id={site}&sort=name", "status=running&sort=-updated_at", "offset=1&limit=1",
    # CONTRACT 4.1: each through an index of its own.
    "sort=last_activity_at", "sort=-last_activity_at", "idle_for=60", "idle_for=0",
    "expires_before={until}", "expires_before={since}&sort=-last_activity_at",
]
# The label and name filters, alone and combined (CONTRACT 3.1, 2.1): a rare
# selector (one instance has it), a common one, the negative forms alone and
# with others, names of 3 characters or more.
LABEL_SHAPES = [
    "label=env=prod", "label=rare=yes", "label=env", "label=env!=prod", "label=!env",
    "label=!rare", "label=env=prod,team=web", "label=env=prod,rare=yes", "label=env,!rare",
    "label=env!=prod,!rare", "label=env=prod&site_id={site}", "label=rare&status=running",
    "label=env=prod&sort=name", "label=team&sort=-status", "label=!env&user_id={user}",
    "label=env=prod&offset=1&limit=1", "q=box 1", "q=BOX", "q=box&label=env=prod",
    "q=box&site_id={site}&sort=-updated_at", "q=bo",
]
COUNTS_SHAPES = [
    "", "by=status", "by=status,instance_type", "by=site_id", "by=user_id,agent_id",
    "by=label:env", "by=status&site_id={site}", "by=status&site_id={site}&status=running",
    "by=label:team&site_id={site}", "by=status&label=env=prod", "by=label:env&label=rare",
    "by=status&q=box 1", "by=instance_type&label=!env", "label=env=prod", "label=!rare",
    "by=agent_id&agent_id={agent}", "idle_for=60", "by=status&expires_before={until}",
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
# (storage.reads.json_rows); nor "SCAN counted": the at most 10,001 rows a
# fleet feed's count reads through its LIMIT (feed_reads.COUNT_LIMIT); nor
# "SCAN candidates": the instances a merged fleet page reads, through
# their LIMIT (feed_reads.Query.merged_page); nor "SCAN instance_count":
# the instance counters (storage.counters), a few dozen rows whatever the
# fleet's size.
TABLE_SCAN = re.compile(r"^SCAN (?!row$|counted$|candidates$|instance_count$)\w+$")

# The fleet's feeds (CONTRACT 4.3, 4.4): each filter alone and with a cursor.
FLEET_LOG_SHAPES = [
    "", "min_level=error", "level=warn", "log_type=agent_action", "since={since}",
    "until={until}", "instance_id={box}", "instance_id={box},{agent}", "site_id={site}",
    "label=env=prod", "label=rare", "label=env=prod,!rare", "min_level=error&label=env=prod",
    "sort=level", "sort=-level&site_id={site}", "offset=1&limit=1",
    "after=p0", "after={log}", "after=p1&min_level=error", "after=p0&label=env=prod",
    "after=p0&site_id={site}&log_type=agent_action", "after=p0&instance_id={box}",
]
# Events by label are tested row by row (the labels as they were, a JSON
# column without an index of its own): not listed here.
EVENT_SHAPES = [
    "", "type=instance.*", "type=plan.created,instance.deleted", "instance_id={box}",
    "site_id={site}", "after=p0", "after=p0&type=plan.*", "after=p0&instance_id={box}",
    "offset=1&limit=1",
]
# SQLite: the event table read backwards along its key (the position, its
# rowid) for the newest first, which LIMIT stops: SQLite calls it SCAN.
ROWID_ORDER = 'FROM "event" AS "t1" ORDER BY "t1"."position" DESC'
FLEET_SHAPES = [("/api/logs", FLEET_LOG_SHAPES), ("/api/events", EVENT_SHAPES)]

SHAPES = [
    *FLEET_SHAPES,
    ("/api/instances", INSTANCE_SHAPES),
    ("/api/instances", LABEL_SHAPES),
    ("/api/instances/counts", COUNTS_SHAPES),
    ("/api/instances/{box}/logs", LOG_SHAPES),
    ("/api/instances/{box}/plans", PLAN_SHAPES),
]
SHAPE_IDS = ["fleet-logs", "events", "instances", "labels-and-q", "counts", "logs", "plans"]
# A virtual table (the trigram index) read for a MATCH, not from end to end.
WHOLE_VIRTUAL_TABLE = re.compile(r"VIRTUAL TABLE INDEX \d+:(?!.*M)")


@pytest.fixture
def dataset(client, make_instance):
    boxes = [make_instance(name=f"box {n}", status=status, instance_type=kind, agent_id=AGENT,
                           labels=labels)
             for n, (status, kind, labels) in enumerate((
                 ("running", "ubuntu", {"env": "prod", "team": "web", "rare": "yes"}),
                 ("paused", "windows", {"env": "dev", "team": "db"}),
                 ("running", "browser", {"env": "prod"}), ("error", "ubuntu", {})))]
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
    """The SELECTs peewee runs, with common table expressions or without
    (it logs each with its parameters)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def emit(self, record):
        if isinstance(record.msg, tuple) and record.msg[0].startswith(("SELECT", "WITH")):
            self.seen.append(record.msg)


def statements_of(client, url):
    """The SELECTs a request runs, with their parameters."""
    statements, peewee_log = Statements(), logging.getLogger("peewee")
    peewee_log.addHandler(statements)
    peewee_log.setLevel(logging.DEBUG)
    try:
        resp = client.get(url)
    finally:
        peewee_log.removeHandler(statements)
        peewee_log.setLevel(logging.NOTSET)
    assert resp.status_code == 200, (url, resp.get_json())
    return statements.seen


def plans_of(client, url):
    return [(sql, [row[3] for row in models.db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params)])
            for sql, params in statements_of(client, url)]


@sqlite_only
def test_a_sites_status_counts_read_that_sites_index_entries_only(client, dataset):
    """The dashboard asks on every page view: one range of (site_id, status,
    ...), already grouped by status, whatever the other sites hold."""
    url = "/api/instances/counts?by=status&site_id={site}".format(**dataset)
    [(_, plan)] = plans_of(client, url)
    assert plan == ["SEARCH t1 USING COVERING INDEX instance_site_id_status_created_at_id "
                    "(site_id=?)"]


# -- PostgreSQL ---------------------------------------------------------------------

def pg_plans_of(client, url):
    """Each statement's plan (EXPLAIN's JSON) with sequential scans priced out
    of reach, so that one shows only where no index answers."""
    plans = []
    for sql, params in statements_of(client, url):
        with models.db.atomic() as transaction:
            models.db.execute_sql("SET LOCAL enable_seqscan = off")
            [(plan,)] = models.db.execute_sql(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchall()
            transaction.rollback()
        plans.append((sql, plan if isinstance(plan, list) else json.loads(plan)))
    models.db.close()
    return plans


def nodes(plan):
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.get("Plans", ()))


@postgres_only
@pytest.mark.parametrize("path, shapes", SHAPES[:5], ids=SHAPE_IDS[:5])
def test_no_instance_query_scans_the_table_on_postgresql(client, dataset, path, shapes):
    scans = {}
    for shape in shapes:
        url = f"{path}?{shape}".format(**dataset)
        for sql, plan in pg_plans_of(client, url):
            # The instance counters are read whole: a few dozen rows.
            if any(node["Node Type"] == "Seq Scan"
                   and node.get("Relation Name") != "instance_count" for node in nodes(plan)):
                scans[url] = (sql, [node["Node Type"] for node in nodes(plan)])
    assert scans == {}


@postgres_only
def test_a_sites_status_counts_read_that_sites_index_entries_on_postgresql(client, dataset):
    url = "/api/instances/counts?by=status&site_id={site}".format(**dataset)
    [(_, plan)] = pg_plans_of(client, url)
    conditions = [node.get("Index Cond", "") for node in nodes(plan)]
    assert any("site_id" in condition for condition in conditions), list(nodes(plan))


@postgres_only
@pytest.mark.parametrize("shape, index", [
    # One selector alone: its counters (storage.label_rows), whatever its share.
    ("label=env=prod", "instance_label_count_pkey"),
    ("label=env", "instance_label_key_count_pkey"),
    ("label=rare=yes", "instance_label_count_pkey"),
    ("label=!rare", "instance_label_key_count_pkey"),
    ("label=env=prod,team=web", "instance_labels"), ("q=box 1", "instance_name_trigrams"),
    # Either filter's index answers the two together; at four rows which one
    # the planner prices lower turns on the width of the row (schema 9 made
    # it wider, and it took the label index).
    ("q=BOX&label=env=prod", ("instance_name_trigrams", "instance_labels")),
])
def test_label_and_name_filters_count_from_their_index_on_postgresql(client, dataset, shape,
                                                                     index):
    """The count of the list (every match, no order to follow) reads the
    filter's own index, or for one selector alone its counter."""
    url = f"/api/instances/counts?{shape}".format(**dataset)
    used = {node.get("Index Name") for _, plan in pg_plans_of(client, url)
            for node in nodes(plan)}
    assert used & set(index if isinstance(index, tuple) else [index]), used


@postgres_only
def test_a_label_page_reads_the_label_rows_in_order_on_postgresql(client, dataset):
    """One `key=value` alone, newest first (the dashboard's page): a range
    of the label rows' index in its order, with no sort of the matches."""
    plans = pg_plans_of(client, "/api/instances?label=env=prod&limit=2")
    found = [node for _, plan in plans for node in nodes(plan)]
    assert "instance_label_value" in {node.get("Index Name") for node in found}, found
    assert not [node for node in found if node["Node Type"] == "Sort"], found


@sqlite_only
@pytest.mark.parametrize("path, shapes", SHAPES, ids=SHAPE_IDS)
def test_no_list_query_scans_a_table(client, dataset, path, shapes):
    scans = {}
    for shape in shapes:
        url = f"{path}?{shape}".format(**dataset)
        plans = plans_of(client, url)
        assert plans, url
        for sql, plan in plans:
            if ROWID_ORDER in sql:
                continue
            if any(TABLE_SCAN.match(line) or WHOLE_VIRTUAL_TABLE.search(line)
                   for line in plan):
                scans[url] = (sql, plan)
    assert scans == {}


# What reads the label index (its key, or its (key, value, instance_id) index)
# or the trigram index (a MATCH).
LABEL_INDEX = re.compile(r"SEARCH \w+ USING (COVERING INDEX instance_label_value \(key=\?"
                         r"|PRIMARY KEY \(key=\? AND instance_id=\?)")
SEARCH_INDEX = re.compile(r"instance_search VIRTUAL TABLE INDEX \d+:M")


@sqlite_only
@pytest.mark.parametrize("shape", [
    "label=env=prod", "label=rare=yes", "label=env", "label=!env", "label=env!=prod,!rare",
    "label=rare=yes&site_id={site}", "label=env=prod,team=web&sort=name", "q=box 1",
    "q=BOX&status=running",
])
def test_label_and_name_filters_read_their_own_index(client, dataset, shape):
    """Each selector of a page (and the name) is looked up in its index,
    whether it drives the query or is tested row by row."""
    url = f"/api/instances?{shape}".format(**dataset)
    lines = [line for _, plan in plans_of(client, url) for line in plan]
    index = SEARCH_INDEX if shape.startswith("q=") else LABEL_INDEX
    assert any(index.search(line) for line in lines), lines


@sqlite_only
@pytest.mark.parametrize("shape", ["label=env=prod", "label=env=prod,team", "label=team=web,!rare"])
def test_a_fleet_page_by_label_reads_the_labels_instances_in_order_of_activity(
        client, dataset, shape):
    """The instances whose newest logs make the page come from one range of
    the label rows, in order of activity and not sorted (feed_reads.Query.
    merged_page), not from every instance active since, whatever its labels."""
    [lines] = [plan for sql, plan in plans_of(client, f"/api/logs?{shape}")
               if sql.startswith("WITH")]
    candidates = lines[lines.index("MATERIALIZE candidates"):lines.index("SCAN candidates")]
    assert candidates[1].startswith("SEARCH t1 USING COVERING INDEX instance_label_activity "
                                    "(key=? AND value=? AND active_at>?)"), lines
    assert not any("TEMP B-TREE" in line for line in candidates), lines


# -- the reaper (jobs/reaper.py) -------------------------------------------------

def reaper_statements():
    """The SELECTs of one reaper pass (nothing due), with their parameters."""
    from jobs.reaper import Reaper

    statements, peewee_log = Statements(), logging.getLogger("peewee")
    peewee_log.addHandler(statements)
    peewee_log.setLevel(logging.DEBUG)
    try:
        Reaper().run_once()
    finally:
        peewee_log.removeHandler(statements)
        peewee_log.setLevel(logging.NOTSET)
        models.db.release()
    assert len(statements.seen) == 2
    return statements.seen


def test_a_reaper_pass_reads_the_deadline_indexes_only(client, dataset):
    """CONTRACT 4.1: a pass reads the due instances through an index on the
    deadline, not every row (SQLite's plan; PostgreSQL's with sequential
    scans priced out of reach)."""
    used = []
    for sql, params in reaper_statements():
        if models.is_sqlite():
            used.append([row[3] for row in models.db.execute_sql(
                f"EXPLAIN QUERY PLAN {sql}", params)])
            continue
        with models.db.atomic() as transaction:
            models.db.execute_sql("SET LOCAL enable_seqscan = off")
            [(plan,)] = models.db.execute_sql(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchall()
            transaction.rollback()
        plan = plan if isinstance(plan, list) else json.loads(plan)
        used.append([node.get("Index Name") for node in nodes(plan)])
    models.db.close()
    idle, expiring = (" ".join(map(str, lines)) for lines in used)
    assert "instance_idle_deadline" in idle, used
    assert "instance_expiring" in expiring, used
    assert not any(TABLE_SCAN.match(str(line)) for lines in used for line in lines), used
