"""Concurrent writers on the real server: SQLite has one write lock, and agent
SDKs retry on their own, so the service must queue writers, never fail them
with "database is locked", and never lose or duplicate an acknowledged write."""
import itertools

from conftest import SITE, USER, call, send
from load import hammer

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}


def listed_ids(url, path):
    """Every id in a list, read page by page."""
    ids = []
    for offset in itertools.count(0, 1000):
        page = call(url, "GET", f"{path}?limit=1000&offset={offset}").get_json()
        ids.extend(row["id"] for row in page)
        if len(page) < 1000:
            return ids


def kind_of(row):
    return "logs" if "log_type" in row else "plans" if "plan_type" in row else "instances"


def assert_clean(server, load):
    assert not load.failures, load.failures[:3]
    assert load.non_2xx == 0, load.statuses
    assert "database is locked" not in server.output
    assert "Traceback" not in server.output


def test_8_threads_creating_50_instances_each_all_succeed(server, figures):
    load = hammer(server.url, 8, lambda conn, thread, n: send(
        conn, "POST", "/api/instances", {**BOX, "name": f"box {thread}-{n}"}), each=50)
    assert_clean(server, load)
    assert load.requests == 400
    created = {reply.get_json()["id"] for reply in load.replies}
    assert sorted(created) == sorted(listed_ids(server.url, "/api/instances"))
    assert len(created) == 400
    figures(**load.figures())


def test_32_writers_mixing_instances_logs_and_plans_lose_nothing(server, figures):
    """Each thread creates an instance, then keeps adding logs (one or a batch
    of ten), plans and updates to it for 3 seconds."""
    homes = [call(server.url, "POST", "/api/instances", {**BOX, "name": f"home {n}"})
             .get_json()["id"] for n in range(32)]

    def write(conn, thread, n):
        home = f"/api/instances/{homes[thread]}"
        kind = n % 5
        if kind == 0:
            return send(conn, "POST", "/api/instances", {**BOX, "name": f"extra {thread}-{n}"})
        if kind == 1:
            return send(conn, "POST", f"{home}/logs",
                        {"log_type": "agent_action", "message": f"step {n}"})
        if kind == 2:
            return send(conn, "POST", f"{home}/logs",
                        [{"log_type": "system", "message": f"burst {n}.{i}"} for i in range(10)])
        if kind == 3:
            return send(conn, "POST", f"{home}/plans", {"title": f"task {n}", "plan_type": "task"})
        return send(conn, "PATCH", home, {"status": "running" if n % 2 else "paused"})

    load = hammer(server.url, 32, write, seconds=3)
    assert_clean(server, load)
    created = {"instances": set(), "logs": set(), "plans": set()}
    for reply in load.replies:
        if reply.status_code == 201:
            body = reply.get_json()
            rows = body if isinstance(body, list) else [body]
            for row in rows:
                created[kind_of(row)].add(row["id"])
    assert created["instances"] <= set(listed_ids(server.url, "/api/instances"))
    for kind in ("logs", "plans"):
        stored = set()
        for home in homes:
            stored.update(listed_ids(server.url, f"/api/instances/{home}/{kind}"))
        assert stored == created[kind], kind
    figures(**load.figures(), rows=sum(map(len, created.values())))


def test_20_concurrent_posts_with_one_idempotency_key_make_one_record(server, figures):
    load = hammer(server.url, 20, lambda conn, thread, n: send(
        conn, "POST", "/api/instances", BOX, {"Idempotency-Key": "one-box"}), each=1)
    assert not load.failures, load.failures[:3]
    assert load.statuses == {201: 20}
    assert len({reply.get_json()["id"] for reply in load.replies}) == 1
    assert sum(reply.headers.get("Idempotent-Replayed") == "true"
               for reply in load.replies) == 19
    assert len(listed_ids(server.url, "/api/instances")) == 1
    figures(**load.figures())


def test_10_concurrent_if_match_puts_give_one_200_and_nine_412(server, figures):
    """The ETag check and the write share one write transaction, so editors
    racing with the same If-Match cannot both pass it."""
    created = call(server.url, "POST", "/api/instances", BOX)
    path = f"/api/instances/{created.get_json()['id']}"
    load = hammer(server.url, 10, lambda conn, thread, n: send(
        conn, "PUT", path, {"name": f"editor {thread}"}, {"If-Match": created.headers["ETag"]}),
        each=1)
    assert not load.failures, load.failures[:3]
    assert load.statuses == {200: 1, 412: 9}
    winner = next(reply for reply in load.replies if reply.status_code == 200)
    stored = call(server.url, "GET", path)
    assert stored.get_json() == winner.get_json()
    assert stored.headers["ETag"] == winner.headers["ETag"]
    figures(**load.figures())
