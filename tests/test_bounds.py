"""What a client cannot make the server keep (issue 22): a sort names each
field at most once, enum lists load without repeats, and the compiled query
shapes a worker keeps are bounded (storage.shapes), so that however many
kinds of list query clients send, a worker's memory stays where it was."""
import threading
import time
from pathlib import Path

from conftest import assert_problem, connect, send
from storage.shapes import SHAPES

OPS = ("k{}", "!k{}", "k{}=v", "k{}!=v")   # the four selector forms, 4 shapes each
SORTS = ("name", "-name", "status", "-created_at", "updated_at")


def test_a_sort_naming_a_field_twice_is_refused(client):
    for sort in ("name,name", "name,-name", "-status,created_at,status"):
        body = assert_problem(client.get(f"/api/instances?sort={sort}"), 422, "sort", "query")
        assert "more than once" in str(body["errors"]["query"]["sort"])
    assert client.get("/api/instances?sort=name,-status,created_at,-updated_at").status_code == 200


def test_enum_lists_load_without_repeats(client, make_instance):
    made = make_instance(status="running")
    make_instance(status="stopped")
    resp = client.get("/api/instances?status=running,running,running")
    assert resp.status_code == 200
    assert [row["id"] for row in resp.get_json()] == [made["id"]]
    # One shape for both spellings: the repeats never reached the query.
    assert client.get("/api/instances?status=stopped").status_code == 200
    one = query_shapes()
    assert client.get("/api/instances?status=stopped,stopped,stopped").status_code == 200
    assert query_shapes() == one


def query_shapes():
    from storage import db
    return set(db.shapes)


# Filters every query has, so that each shape is as large as a busy
# client's (about 5 KB compiled), and the memory a shape costs shows.
COMMON = ("&status=pending,running,stopped,error&instance_type=ubuntu,browser"
          "&site_id=5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01&q=bo&label="
          + ",".join(f"!x{index}" for index in range(16)))


def distinct_shapes(start, count):
    """`count` list queries from the `start`th on, each of a shape of its
    own: label selectors (4 forms each, up to 7 of them) by the digits of
    its number in base 4, and a sort."""
    for number in range(start, start + count):
        digits, rest = [], number
        for position in range(7):
            digits.append(OPS[rest % 4].format(position))
            rest //= 4
            if rest == 0:
                break
        sort = SORTS[number % len(SORTS)]
        yield f"/api/instances?limit=1&sort={sort}{COMMON},{','.join(digits)}"


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def send_all(url, paths, connections=2):
    """Each path GET on one of `connections` keep-alive connections; every
    answer must be 200."""
    paths, failures = list(paths), []

    def worker(part):
        conn = connect(url)
        try:
            for path in part:
                reply = send(conn, "GET", path)
                if reply.status_code != 200:
                    failures.append((path, reply.status_code, reply.get_data(as_text=True)))
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(paths[index::connections],))
               for index in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


def test_distinct_query_shapes_leave_a_workers_memory_where_it_was(start_server, figures):
    # Two threads: each thread's connection keeps its own cache of prepared
    # statements (100, cysqlite's default), which the warm-up fills.
    srv = start_server("--workers", "1", "--threads", "2")
    pid = srv.pids()[-1]
    conn = connect(srv.url)
    for name in ("a", "b", "c"):
        assert send(conn, "POST", "/api/instances", {
            "site_id": "5b0c6b52-3c6b-4a55-8f6e-0d7c3a1e9a01",
            "user_id": "9d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6", "name": name,
            "labels": {"k0": "v", "k1": "w"}}).status_code == 201
    conn.close()
    # Warm-up: more shapes than the bound, so the kept shapes are at their
    # most, and every thread has its connection and statement cache.
    warm = 3 * SHAPES
    send_all(srv.url, distinct_shapes(0, warm))
    started_kb = rss_kb(pid)
    began = time.monotonic()
    send_all(srv.url, distinct_shapes(warm, 10_000))
    took = time.monotonic() - began
    grown_kb = rss_kb(pid) - started_kb
    figures(requests=10_000, seconds=round(took, 1), rss_start_mb=round(started_kb / 1024, 1),
            grown_mb=round(grown_kb / 1024, 1))
    assert grown_kb < 10 * 1024, f"the worker grew by {grown_kb} KiB over 10,000 new shapes"


def test_the_shapes_are_distinct_and_exceed_the_bound():
    """The memory test would fail without a bound: its queries are of more
    shapes than a worker keeps."""
    paths = list(distinct_shapes(3 * SHAPES, 10_000))
    assert len(set(paths)) == 10_000
    labels = {path.partition("&label=")[2] for path in paths}
    assert len(labels) > 4 * SHAPES
    assert next(distinct_shapes(0, 1)).endswith("x15,k0")
