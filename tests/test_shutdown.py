"""Shutdown is shutdown, however the signal arrives (issue 22 item 8): with
2 workers and requests held waiting for a log, SIGTERM or SIGINT to the
parent alone, or SIGTERM to the whole process group (systemd's
KillMode=control-group, `kill -TERM -- -PGID`), answers every waiter, starts
no worker, and leaves no process behind within 3 s. On SQLite, and on
PostgreSQL when INSTANCES_TEST_DATABASE_URL is set."""
import os
import re
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import SITE, USER, call, connect, send

BOX = {"site_id": SITE, "user_id": USER, "name": "box"}
WAITERS = 4
GONE_WITHIN = 3.0


class Waiter(threading.Thread):
    """A GET held on a connection of its own; `port` is its local port once
    connected, `reply` its answer."""

    def __init__(self, url, path):
        super().__init__(daemon=True)
        self.conn = connect(url, timeout=60)
        self.conn.connect()
        self.port = self.conn.sock.getsockname()[1]
        self.path, self.reply = path, None
        self.start()

    def run(self):
        try:
            self.reply = send(self.conn, "GET", self.path)
        finally:
            self.conn.close()


def server_sockets(pids):
    """The inodes of the sockets the processes `pids` hold open."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def taken(server_port, client_ports, pids):
    """The client ports whose connection a server process has accepted and
    whose request it has read whole (nothing left in the socket's receive
    queue), from the kernel's table of TCP sockets."""
    owned, found = server_sockets(pids), set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues, inode = fields[1], fields[2], fields[3], fields[4], fields[9]
        port, peer = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if (port == server_port and peer in client_ports and state == "01"
                and int(queues.split(":")[1], 16) == 0 and int(inode) in owned):
            found.add(peer)
    return found


def alive(pid):
    """Whether `pid` still runs (an exited one may linger as a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
@pytest.mark.parametrize("delivery", ["SIGTERM to the parent", "SIGINT to the parent",
                                      "SIGTERM to the group", "SIGTERM to the workers first"])
def test_a_stop_answers_the_waiters_restarts_nothing_and_ends_every_process_within_3_s(
        start_server, figures, delivery):
    server = start_server("--workers", "2", session=True)
    pids, everyone = server.pids(), server.pids(jobs=True)
    assert len(pids) == 3 and len(everyone) == 4, everyone
    instance = call(server.url, "POST", "/api/instances", BOX).get_json()
    logs = f"/api/instances/{instance['id']}/logs"
    first = call(server.url, "POST", logs, {"log_type": "system", "message": "first"})
    waiters = [Waiter(server.url, f"{logs}?after={first.get_json()['id']}&wait=25")
               for _ in range(WAITERS)]
    # Held: every request read by a worker, and none answered.
    server_port = urlsplit(server.url).port
    ports = {waiter.port for waiter in waiters}
    deadline = time.monotonic() + 10
    while taken(server_port, ports, pids[1:]) != ports:
        assert time.monotonic() < deadline, "the workers did not take every waiter"
        time.sleep(0.02)
    assert not any(waiter.reply for waiter in waiters), "a wait was answered early"

    started = time.monotonic()
    if delivery == "SIGTERM to the group":
        os.killpg(server.proc.pid, signal.SIGTERM)
    elif delivery == "SIGTERM to the workers first":
        # The group's signal as it may land: the workers see theirs, and
        # one of them exits, before the parent sees its own.
        for pid in pids[1:]:
            os.kill(pid, signal.SIGTERM)
        while all(alive(pid) for pid in pids[1:]):
            assert time.monotonic() - started < GONE_WITHIN, server.output
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
    else:
        server.proc.send_signal(signal.SIGINT if "SIGINT" in delivery else signal.SIGTERM)
    for waiter in waiters:
        waiter.join(GONE_WITHIN)
    answered = time.monotonic() - started
    while any(alive(pid) for pid in everyone) and time.monotonic() - started < GONE_WITHIN:
        time.sleep(0.02)
    gone = time.monotonic() - started
    figures(delivery=delivery, waiters_answered_s=round(answered, 2), gone_s=round(gone, 2))

    assert not [pid for pid in everyone if alive(pid)], server.output
    assert gone < GONE_WITHIN, server.output
    assert server.proc.wait(1) == 0, server.output
    for waiter in waiters:
        assert waiter.reply is not None and waiter.reply.status_code == 200, server.output
        assert waiter.reply.get_json() == []
    output = server.output
    assert "starting another" not in output, output
    # Each worker said it stopped, and what it answered at once. A waiter
    # between two reads of its page (woken by the test's own log) is not
    # counted there, but is answered all the same (above).
    held = re.findall(r"Stopping: finishing the requests in flight \(answering (\d+) waiting",
                      output)
    assert len(held) == 2 and sum(map(int, held)) <= WAITERS, output


def test_a_worker_told_to_stop_stops_the_server_instead_of_being_replaced(start_server):
    """A worker exits 0 only when told to stop: the server stops with it."""
    server = start_server("--workers", "2")
    parent, worker, other = server.pids()
    os.kill(worker, signal.SIGTERM)
    assert server.proc.wait(GONE_WITHIN) == 0, server.output
    assert not alive(worker) and not alive(other)
    output = server.output
    assert "starting another" not in output, output
    assert f"Worker {worker} was told to stop; stopping the server" in output


def test_a_worker_that_dies_otherwise_is_still_replaced(start_server):
    server = start_server("--workers", "2")
    parent, worker, other = server.pids()
    os.kill(worker, signal.SIGKILL)
    server.wait_for(rf"Worker {worker} exited \(status -9\); starting another")
    deadline = time.monotonic() + 15
    while len(server.pids()) < 3 or call(server.url, "GET", "/healthz").status_code != 200:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.05)
    assert server.proc.poll() is None
