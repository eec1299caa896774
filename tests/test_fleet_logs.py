"""GET /api/logs (CONTRACT 4.3, 4.7): every instance's logs in one list,
with the log filters and the instance's, paged newest first or followed
after a position that survives deletions. On whichever engine the suite
runs on; processes appending at once: test_fleet_servers.py."""
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest

import feed_reads
import models
from conftest import SITE, assert_problem, random_id
from labels import parse_selectors
from storage import db
from storage.fields import utcnow
from storage.writes import write
from test_sequence import log_rows

OTHER_SITE = "0f8fad5b-d9cb-469f-a165-70867728950e"


# On PostgreSQL a page after a cursor holds back the rows of transactions
# younger than the oldest one still open in the whole cluster (feeds.py):
# reads that expect rows wait for them.
SETTLE = "&wait=2"


def messages(resp):
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return [log["message"] for log in resp.get_json()]


def next_link(resp):
    link = resp.headers["Link"]
    assert link.endswith('>; rel="next"'), link
    url = urlsplit(link[1:link.index(">")])
    return f"{url.path}?{url.query}"


@pytest.fixture
def fleet(client, make_instance):
    """Three instances (two sites, labels) with logs at several levels:
    {name: instance}, the logs appended in this order."""
    made = {"web": make_instance(name="web", labels={"env": "prod", "team": "web"}),
            "db": make_instance(name="db", labels={"env": "prod"}),
            "lab": make_instance(name="lab", site_id=OTHER_SITE, labels={"env": "dev"})}
    for name, level, log_type in (("web", "info", "system"), ("db", "error", "system"),
                                  ("lab", "warn", "agent"), ("web", "fatal", "agent"),
                                  ("db", "debug", "system"), ("lab", "error", "system")):
        resp = client.post(f"/api/instances/{made[name]['id']}/logs", json={
            "log_type": log_type, "level": level, "message": f"{name}-{level}"})
        assert resp.status_code == 201
    return made


def test_every_instances_logs_newest_first_each_with_its_instance(client, fleet):
    resp = client.get("/api/logs")
    assert messages(resp) == ["lab-error", "db-debug", "web-fatal", "lab-warn", "db-error",
                              "web-info"]
    assert resp.headers["X-Total-Count"] == "6"
    assert resp.get_json()[0]["instance_id"] == fleet["lab"]["id"]
    page = client.get("/api/logs?limit=2&offset=2")
    assert messages(page) == ["web-fatal", "lab-warn"]
    assert "offset=4" in page.headers["Link"] and 'rel="prev"' in page.headers["Link"]


@pytest.mark.parametrize("query, expected", [
    ("min_level=error", ["lab-error", "web-fatal", "db-error"]),
    ("level=warn,debug", ["db-debug", "lab-warn"]),
    ("log_type=agent", ["web-fatal", "lab-warn"]),
    ("label=env=prod", ["db-debug", "web-fatal", "db-error", "web-info"]),
    ("label=env=prod,!team", ["db-debug", "db-error"]),
    ("label=env!=prod&min_level=warn", ["lab-error", "lab-warn"]),
    (f"site_id={OTHER_SITE}", ["lab-error", "lab-warn"]),
    ("min_level=error&label=team", ["web-fatal"]),
    ("sort=-level&limit=2", ["web-fatal", "lab-error"]),
    ("sort=level&limit=2", ["db-debug", "web-info"]),
])
def test_filters_combine_and_count(client, fleet, query, expected):
    resp = client.get(f"/api/logs?{query}")
    assert messages(resp) == expected
    if "limit" not in query:
        assert resp.headers["X-Total-Count"] == str(len(expected))


def test_instance_id_takes_a_comma_list_of_up_to_100(client, fleet):
    both = f"{fleet['web']['id']},{fleet['lab']['id'].upper()}"
    assert messages(client.get(f"/api/logs?instance_id={both}")) == [
        "lab-error", "web-fatal", "lab-warn", "web-info"]
    many = ",".join(random_id() for _ in range(101))
    assert_problem(client.get(f"/api/logs?instance_id={many}"), 422, "instance_id", "query")
    assert_problem(client.get("/api/logs?instance_id=nope"), 422, "instance_id", "query")


def test_since_and_until_bound_the_time(client, fleet):
    newest = client.get("/api/logs?limit=1").get_json()[0]["created_at"]
    assert messages(client.get(f"/api/logs?since={newest.replace('+', '%2B')}")) == [
        "lab-error"]
    assert "lab-error" not in messages(client.get(
        f"/api/logs?until={newest.replace('+', '%2B')}"))


def test_a_cursor_from_p0_walks_every_log_once_in_commit_order_by_next_links(client, fleet):
    seen, path = [], f"/api/logs?after=p0&limit=4{SETTLE}"
    while True:
        resp = client.get(path)
        page = messages(resp)
        assert resp.headers["X-Total-Count"] == "6"
        if not page:
            assert "Link" not in resp.headers
            break
        seen += page
        path = next_link(resp)
    assert seen == ["web-info", "db-error", "lab-warn", "web-fatal", "db-debug", "lab-error"]


def test_a_position_stays_valid_when_its_log_is_deleted_and_an_id_of_a_gone_log_is_410(
        client, fleet):
    first = client.get(f"/api/logs?after=p0&limit=3{SETTLE}")
    position_path = next_link(first)
    last_id = first.get_json()[-1]["id"]           # lab-warn, of "lab"
    assert client.delete(f"/api/instances/{fleet['lab']['id']}").status_code == 204
    client.post(f"/api/instances/{fleet['web']['id']}/logs",
                json={"log_type": "system", "message": "web-new"})

    assert messages(client.get(position_path)) == ["web-fatal", "db-debug", "web-new"]
    gone = assert_problem(client.get(f"/api/logs?after={last_id}"), 410)
    assert "without after" in gone["detail"]
    # An id of a log still kept starts after it, as the instance list does.
    kept = first.get_json()[0]["id"]
    assert messages(client.get(f"/api/logs?after={kept}&limit=2{SETTLE}")) == [
        "db-error", "web-fatal"]


@pytest.mark.parametrize("query, field", [
    ("after=p", "after"), ("after=12", "after"), ("after=p1.2.3", "after"),
    ("after=p0&sort=level", "sort"), ("wait=1", "wait"), ("after=p0&wait=31", "wait"),
    ("site_id=x", "site_id"), ("label=env==x", "label"), ("nope=1", "nope"),
])
def test_bad_queries_are_422_naming_the_parameter(client, query, field):
    assert_problem(client.get(f"/api/logs?{query}"), 422, field, "query")


def test_the_total_is_left_out_past_the_exact_limit_and_the_link_still_pages(
        client, fleet, monkeypatch):
    monkeypatch.setattr(feed_reads, "COUNT_LIMIT", 4)
    resp = client.get("/api/logs?limit=2")
    assert "X-Total-Count" not in resp.headers
    assert "offset=2" in resp.headers["Link"]
    assert client.get("/api/logs?min_level=error").headers["X-Total-Count"] == "3"
    assert "X-Total-Count" not in client.get("/api/logs?after=p0").headers


@pytest.mark.parametrize("first, most", [(1, 1), (1, 2), (1, 1000), (64, 1001)])
def test_a_count_by_instance_filters_alone_matches_the_logs_listed(
        client, fleet, monkeypatch, first, most):
    # Read from the instances' log_count (feed_reads.count_by_instances), a
    # few instances and then more, or counted log by log when more instances
    # match than it reads.
    monkeypatch.setattr(feed_reads, "FIRST_READ", first)
    monkeypatch.setattr(feed_reads, "BY_INSTANCES", most)
    client.delete(f"/api/instances/{fleet['db']['id']}")
    for query in ("label=env=prod", "label=env!=prod", f"site_id={SITE}", "label=team",
                  "label=nope"):
        resp = client.get(f"/api/logs?{query}&limit=1")
        listed = client.get(f"/api/logs?{query}&limit=1000").get_json()
        assert resp.headers["X-Total-Count"] == str(len(listed)), query
    monkeypatch.setattr(feed_reads, "COUNT_LIMIT", 3)
    assert "X-Total-Count" not in client.get("/api/logs?label=env&limit=1").headers
    assert client.get("/api/logs?label=env=prod").headers["X-Total-Count"] == "2"


def test_a_wait_is_answered_by_the_next_matching_log_of_any_instance(client, fleet, app):
    position = next_link(client.get(f"/api/logs?after=p0&limit=6{SETTLE}"))
    answer = {}

    def wait():
        started = time.monotonic()
        answer["resp"] = app.test_client().get(f"{position}&min_level=error&wait=10".replace(
            SETTLE, ""))
        answer["took"] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + 5
    while "*logs" not in db.tail.keys() and time.monotonic() < deadline:
        time.sleep(0.01)
    client.post(f"/api/instances/{fleet['db']['id']}/logs",
                json={"log_type": "system", "level": "info", "message": "quiet"})
    client.post(f"/api/instances/{fleet['web']['id']}/logs",
                json={"log_type": "system", "level": "error", "message": "loud"})
    waiter.join(10)
    assert messages(answer["resp"]) == ["loud"]
    assert answer["took"] < 5


def test_every_filter_of_a_wait_without_a_new_log_answers_empty_at_the_deadline(
        client, fleet):
    position = next_link(client.get(f"/api/logs?after=p0&limit=6{SETTLE}"))
    started = time.monotonic()
    assert messages(client.get(f"{position.replace(SETTLE, '')}&wait=0.3&label=env=prod")) == []
    assert time.monotonic() - started >= 0.3


def test_site_id_is_an_instance_filter_that_matches_nothing_for_an_unknown_site(client, fleet):
    resp = client.get(f"/api/logs?site_id={random_id()}")
    assert messages(resp) == [] and resp.headers["X-Total-Count"] == "0"
    assert client.get(f"/api/logs?site_id={SITE}").headers["X-Total-Count"] == "4"


@pytest.mark.parametrize("query", ["label=env%3Dprod", "label=team", f"site_id={SITE}"])
def test_a_label_or_site_most_of_the_fleet_has_pages_the_same_read_in_order(
        app, client, make_instance, query):
    # A fifth of 30 instances has env=prod: on SQLite the page reads the
    # logs newest first and tests each one's instance (reads_in_order)
    # rather than sort every log of the matching instances; the same rows.
    made = [make_instance(name=f"i{n}", labels={"env": "prod"} if n % 5 == 0 else {"team": "x"})
            for n in range(30)]
    for round_ in range(2):
        for instance in made:
            assert client.post(f"/api/instances/{instance['id']}/logs", json={
                "log_type": "system", "message": f"{instance['name']} {round_}"}).status_code == 201
    key = query.split("=")[1].split("%")[0]
    wanted = [f"{i['name']} {r}" for r in (1, 0) for i in reversed(made)
              if key == SITE or key in i["labels"]]
    pages = []
    for offset in range(0, len(wanted) + 4, 4):
        pages += messages(client.get(f"/api/logs?{query}&limit=4&offset={offset}"))
    assert pages == wanted
    with app.app_context():
        planned = feed_reads.Query(feed_reads.LOGS, {
            "label": tuple(parse_selectors("env=prod"))}).reads_in_order(4)
    assert bool(planned) is feed_reads.is_sqlite()


@pytest.mark.parametrize("merge_most, candidates, count_limit", [
    (1_000, 4_096, 10_000), (1_000, 1, 10_000), (0, 4_096, 10_000), (0, 4_096, 2)])
def test_a_page_past_a_busy_instance_of_another_label_is_the_same(
        client, make_instance, monkeypatch, merge_most, candidates, count_limit):
    # The newest logs are all one other instance's. The page is merged from
    # the matching instances' newest logs (feed_reads.Query.merged_page);
    # past MERGE_MOST, or when MERGE_CANDIDATES instances cannot tell, the
    # logs are read in order or sorted, past COUNT_LIMIT read in order: each
    # way, the same rows.
    monkeypatch.setattr(feed_reads, "MERGE_MOST", merge_most)
    monkeypatch.setattr(feed_reads, "MERGE_CANDIDATES", candidates)
    monkeypatch.setattr(feed_reads, "COUNT_LIMIT", count_limit)
    made = [make_instance(name=f"i{n}", labels={"env": "prod"} if n % 5 == 0 else {"team": "x"})
            for n in range(30)]
    for instance in made:
        client.post(f"/api/instances/{instance['id']}/logs",
                    json={"log_type": "system", "message": instance["name"]})
    busy = made[1]
    assert client.post(f"/api/instances/{busy['id']}/logs", json=[
        {"log_type": "system", "message": "busy"}] * 20).status_code == 201
    wanted = [i["name"] for i in reversed(made) if "env" in i["labels"]]
    pages = []
    for offset in range(0, len(wanted) + 2, 2):
        pages += messages(client.get(f"/api/logs?label=env%3Dprod&limit=2&offset={offset}"))
    assert pages == wanted
    newest = made[5]
    client.post(f"/api/instances/{newest['id']}/logs", json=[
        {"log_type": "system", "message": "prod new"}] * 3)
    assert messages(client.get("/api/logs?label=env%3Dprod&limit=2")) == ["prod new"] * 2


@pytest.mark.parametrize("walk", [True, False])
@pytest.mark.parametrize("query", ["label=env%3Dprod", f"site_id={SITE}"])
def test_a_merged_page_over_time_is_every_matching_log_newest_first(
        client, make_instance, monkeypatch, walk, query):
    # Logs a few seconds apart, as in a fleet at work, so that the bound
    # (an instance's activity plus a second) tells apart which instances
    # can hold a page's logs. One matching instance was active last (a
    # write) and has no new log; one of another label appended last.
    monkeypatch.setattr(feed_reads.Query, "walks", lambda self, reads: walk)
    reads = []
    counted = feed_reads.Query.candidates_read
    monkeypatch.setattr(feed_reads.Query, "candidates_read",
                        lambda self, *args: reads.append(args) or counted(self, *args))
    prod = [make_instance(name=f"p{n}", labels={"env": "prod"}) for n in range(8)]
    other = make_instance(name="other", site_id=OTHER_SITE, labels={"env": "dev"})
    start = utcnow() - timedelta(hours=1)
    logs, moment = [], start
    for round_ in range(3):
        for n, instance in enumerate(prod):
            for step in range(round_ + 1):   # later rounds in short bursts
                moment += timedelta(seconds=3) if step == 0 else timedelta(milliseconds=300)
                logs.append((moment, instance["id"], f"p{n} r{round_} s{step}"))
    for _ in range(40):
        moment += timedelta(milliseconds=100)
        logs.append((moment, other["id"], "busy"))
    with write():   # made an hour before the first log
        models.Instance.update(last_activity_at=start - timedelta(hours=1)).execute()
        for at, instance_id, message in logs:
            [row] = log_rows(instance_id, message)
            models.InstanceLog.insert_rows([{**row, "created_at": at}])
    assert client.patch(f"/api/instances/{prod[2]['id']}",
                        json={"name": "renamed"}).status_code == 200
    wanted = [message for _, _, message in sorted(logs, reverse=True) if message != "busy"]

    first = messages(client.get(f"/api/logs?{query}&limit=5"))
    assert first == wanted[:5] and reads == []   # merged from the first few instances
    pages = []
    for offset in range(0, len(wanted) + 7, 7):
        pages += messages(client.get(f"/api/logs?{query}&limit=7&offset={offset}"))
    assert pages == wanted


def test_a_log_within_a_second_of_its_instances_recorded_activity_is_not_missed(
        client, make_instance):
    # Activity moves once a second: x's second log leaves it at x's first.
    # By activity w and y come first, yet x has the newest log.
    x, w, y = (make_instance(name=name, labels={"env": "prod"})["id"] for name in "xwy")
    start = utcnow() - timedelta(hours=1)
    with write():
        models.Instance.update(last_activity_at=start - timedelta(hours=1)).execute()
        for instance_id, after, message in ((x, 0, "x first"), (w, 200, "w"), (y, 500, "y"),
                                            (x, 900, "x newest")):
            [row] = log_rows(instance_id, message)
            models.InstanceLog.insert_rows(
                [{**row, "created_at": start + timedelta(milliseconds=after)}])
    assert messages(client.get("/api/logs?label=env%3Dprod&limit=1")) == ["x newest"]
    assert messages(client.get("/api/logs?label=env%3Dprod&limit=2&offset=1")) == ["y", "w"]
