"""The reaper and the purge inside real servers (CONTRACT 4.1, 4.2), with a
short interval and short timeouts: idle and expired instances end within the
bound, heartbeats and logs keep one alive, a PATCH racing the reaper either
wins or loses whole, several worker processes and servers on one database
end each instance once, and retention runs in the background. On SQLite,
and on PostgreSQL with INSTANCES_TEST_DATABASE_URL. Nothing waits by sleeping
for another process: each test polls the server's state with a deadline."""
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from conftest import SITE, USER, call, wait_until

FAST = {"INSTANCES_LIFECYCLE_INTERVAL": "0.2"}
# CONTRACT 4.1: within 5 s of the deadline; the deadline is the timeout
# plus the second of tolerance (4.7).
BOUND = 5


def create(url, **fields):
    resp = call(url, "POST", "/api/instances",
                {"site_id": SITE, "user_id": USER, "name": "box", "status": "running", **fields})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def get(url, instance_id):
    resp = call(url, "GET", f"/api/instances/{instance_id}")
    assert resp.status_code == 200
    return resp.get_json()


def lifecycle_logs(url, instance_id):
    resp = call(url, "GET", f"/api/instances/{instance_id}/logs?log_type=lifecycle")
    assert resp.status_code == 200
    return resp.get_json()


def when(text):
    return datetime.fromisoformat(text)


def test_an_idle_instance_ends_within_the_bound(start_server):
    server = start_server("--workers", "1", env=FAST)
    made = create(server.url, idle_timeout_s=1)
    ended = wait_until(lambda: (row := get(server.url, made["id"]))["status"] == "error" and row,
                       1 + 1 + BOUND + 2, "the idle instance ended")
    assert ended["status_reason"] == "idle_timeout"
    took = when(ended["updated_at"]) - when(made["last_activity_at"])
    assert timedelta(seconds=2) <= took <= timedelta(seconds=1 + 1 + BOUND)
    [log] = lifecycle_logs(server.url, made["id"])
    assert log["level"] == "warn" and "idle" in log["message"]
    # Counted in /metrics (CONTRACT 4.5).
    exposition = call(server.url, "GET", "/metrics").get_data(as_text=True)
    assert 'instance_api_lifecycle_transitions_total{reason="idle_timeout"} 1.0' in exposition
    # An ended instance's heartbeat says so.
    reply = call(server.url, "POST", f"/api/instances/{made['id']}/heartbeat")
    assert reply.status_code == 409
    assert reply.get_json()["status_reason"] == "idle_timeout"


def test_heartbeats_and_logs_keep_an_instance_alive(start_server):
    server = start_server("--workers", "1", env=FAST)
    beating = create(server.url, name="beating", idle_timeout_s=1)
    logging = create(server.url, name="logging", idle_timeout_s=1)
    quiet = create(server.url, name="quiet", idle_timeout_s=1)
    # Paced, not a rendezvous: the agent's own rhythm, a beat every 0.3 s,
    # until the quiet one has ended.
    deadline = time.monotonic() + 1 + 1 + BOUND + 2
    while get(server.url, quiet["id"])["status"] != "error":
        assert time.monotonic() < deadline, "the quiet instance never ended"
        assert call(server.url, "POST", f"/api/instances/{beating['id']}/heartbeat",
                    ).status_code == 204
        assert call(server.url, "POST", f"/api/instances/{logging['id']}/logs",
                    {"log_type": "agent_action", "message": "still here"}).status_code == 201
        time.sleep(0.3)
    for row in (beating, logging):
        assert get(server.url, row["id"])["status"] == "running"
        assert lifecycle_logs(server.url, row["id"]) == []
    # Once the beats stop, they end too.
    for row in (beating, logging):
        wait_until(lambda row=row: get(server.url, row["id"])["status"] == "error",
                   1 + 1 + BOUND + 2, f"{row['name']} ended once quiet")


def test_expiry_ends_paused_and_active_instances(start_server):
    server = start_server("--workers", "1", env=FAST)
    soon = (datetime.now().astimezone() + timedelta(seconds=1)).isoformat()
    rows = [create(server.url, status=status, expires_at=soon)
            for status in ("paused", "running", "pending")]
    for row in rows:
        ended = wait_until(lambda row=row: (found := get(server.url, row["id"]))["status"] ==
                           "terminated" and found, 1 + BOUND + 2, "expired")
        assert ended["status_reason"] == "expired"
        assert len(lifecycle_logs(server.url, row["id"])) == 1


def test_a_patch_racing_the_reaper_wins_or_loses_whole(start_server, figures):
    """Each PATCH carries the ETag read at creation: it lands before the
    reaper (200: stopped, no lifecycle log) or after it (412: error and
    idle_timeout, one lifecycle log), never a mix."""
    server = start_server("--workers", "2", env=FAST)
    made = [create(server.url, name=f"race {n}", idle_timeout_s=1) for n in range(24)]
    tags = {row["id"]: call(server.url, "GET", f"/api/instances/{row['id']}").headers["ETag"]
            for row in made}
    start = when(made[0]["last_activity_at"])

    def patch(n, row):
        # Spread over the moments the reaper may act: from just before the
        # idle deadline (2 s) to a little after it.
        moment = start + timedelta(seconds=1.6 + n * 0.05)
        pause = (moment - datetime.now().astimezone()).total_seconds()
        if pause > 0:
            time.sleep(pause)
        return call(server.url, "PATCH", f"/api/instances/{row['id']}", {"status": "stopped"},
                    {"If-Match": tags[row["id"]]}).status_code

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(patch, range(len(made)), made))
    won = lost = 0
    for row, status in zip(made, outcomes):
        final = wait_until(lambda row=row: (found := get(server.url, row["id"]))["status"] in
                           ("stopped", "error") and found, BOUND + 3, "settled")
        logs = lifecycle_logs(server.url, row["id"])
        if status == 200:
            won += 1
            assert (final["status"], final["status_reason"], logs) == ("stopped", None, [])
        else:
            lost += 1
            assert status == 412
            assert (final["status"], final["status_reason"]) == ("error", "idle_timeout")
            assert len(logs) == 1
    figures(patch_won=won, reaper_won=lost)


def end_all_once(urls, count):
    """`count` idle instances made through the servers at `urls` in turn
    all end, each with exactly one lifecycle log."""
    made = [create(urls[n % len(urls)], name=f"n{n}", idle_timeout_s=1) for n in range(count)]
    for row in made:
        wait_until(lambda row=row: get(urls[0], row["id"])["status"] == "error", 1 + 1 + BOUND + 5,
                   "every instance ended")
    for row in made:
        logs = lifecycle_logs(urls[-1], row["id"])
        assert len(logs) == 1, logs
        total = call(urls[0], "GET", f"/api/instances/{row['id']}/logs").headers["X-Total-Count"]
        assert total == "1"


def test_two_workers_and_two_servers_end_each_instance_once(start_server, tmp_path):
    shared = tmp_path / "shared.db"
    first = start_server("--workers", "2", env=FAST, db=shared, log_name="first.log")
    second = start_server("--workers", "2", env=FAST, db=shared, log_name="second.log")
    end_all_once([first.url, second.url], 30)


def test_several_workers_run_the_jobs_in_one_process_of_their_own_replaced_if_it_dies(
        start_server):
    server = start_server("--workers", "2", env=FAST)
    jobs = server.jobs_pid()
    # Stopped, the jobs worker ends nothing, and no serving worker does it
    # instead: an instance idle past its deadline stays as it was.
    os.kill(jobs, signal.SIGSTOP)
    made = create(server.url, idle_timeout_s=1)
    time.sleep(1 + 1 + 1.5)
    assert get(server.url, made["id"])["status"] == "running"
    # Killed, it is replaced, and the replacement ends the instance.
    os.kill(jobs, signal.SIGKILL)
    server.wait_for(rf"Jobs worker {jobs} exited \(status -9\); starting another")
    ended = wait_until(lambda: (row := get(server.url, made["id"]))["status"] == "error" and row,
                       BOUND + 5, "the replacement ended the instance")
    assert ended["status_reason"] == "idle_timeout"
    assert server.jobs_pid() != jobs and len(server.pids()) == 3
    exposition = call(server.url, "GET", "/metrics").get_data(as_text=True)
    assert 'instance_api_lifecycle_transitions_total{reason="idle_timeout"} 1.0' in exposition


def test_the_purge_runs_in_the_background(start_server):
    server = start_server("--workers", "1", env={"INSTANCES_PURGE_INTERVAL": "0.2",
                                                 "INSTANCES_LOG_MAX_PER_INSTANCE": "3"})
    made = create(server.url)
    logs = f"/api/instances/{made['id']}/logs"
    reply = call(server.url, "POST", logs, [{"log_type": "system", "message": f"m{n}"}
                                            for n in range(10)])
    assert reply.status_code == 201
    wait_until(lambda: call(server.url, "GET", logs).headers["X-Total-Count"] == "3", 10,
               "the oldest logs purged")
    listed = call(server.url, "GET", f"{logs}?sort=created_at").get_json()
    assert [row["message"] for row in listed] == ["m7", "m8", "m9"]
    gone = call(server.url, "GET", f"{logs}?after={reply.get_json()[0]['id']}")
    assert gone.status_code == 410
