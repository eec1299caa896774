"""Deterministic datasets for the benchmark, written through the models in
bulk (one transaction per 10,000 rows), not over HTTP: a million logs over
HTTP would take longer than the benchmark itself.

    python bench/seed.py small bench/small.db
    python bench/seed.py large bench/large.db
    python bench/seed.py small postgresql://postgres@127.0.0.1:5432/bench_small_seeding

small: 1,000 instances / 10,000 logs; large: 100,000 instances / 1,000,000
logs. One hot instance holds a tenth of the logs; the rest are spread over
the other instances. About 40% of instances are `running`; they belong to
size/250 sites. Every instance has two labels: `env` (`prod` for a fifth of
them, else `staging` or `dev`) and `team` (one of eight). At every size, 50
instances have `gpu` in their name (what list_q searches for). Ids are
UUIDv7 of each row's created_at, as if the rows had been made over those 30
days (the purge's retention finds old logs by id).
"""
import random
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from peewee import chunked

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import migrations  # noqa: E402
import models  # noqa: E402
from storage import db  # noqa: E402
from storage.engines import open_database  # noqa: E402
from storage.fields import utcnow  # noqa: E402

SIZES = {"small": (1_000, 10_000), "large": (100_000, 1_000_000)}
CHUNK = 10_000
STATUSES = ("pending", "starting", "paused", "stopping", "stopped", "terminated", "error")
SEARCHED = 50   # instances named with "gpu", at any size


def labels_of(n):
    """env=prod for a fifth of the instances, a team for each; spread over
    the sites (instance n is at site n % sites) rather than by site."""
    return {"env": "prod" if n * 761 % 1000 < 200 else ("staging", "dev")[n % 2],
            "team": f"team-{n // 3 % 8}"}


def name_of(n, instances):
    return f"gpu-instance-{n}" if n % (instances // SEARCHED) == 7 else f"instance-{n}"


def id_at(moment, rng):
    """A UUIDv7 of `moment` (the service's ids carry the time they were
    made: the purge finds old logs by id), its random bits from `rng`."""
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=ms << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62
                     | rng.getrandbits(62))


def insert(model, rows):
    """One transaction, in statements of 1,000 rows: PostgreSQL takes at
    most 65,535 values a statement."""
    with db.atomic():
        for chunk in chunked(rows, 1000):
            model.insert_many(chunk).execute()


def seed(size, path):
    instances, logs = SIZES[size]
    rng = random.Random(42)
    db.initialize(open_database(str(path)))
    migrations.create_tables()
    sites = [uuid.UUID(int=rng.getrandbits(128), version=4)
             for _ in range(max(1, instances // 250))]
    start = utcnow() - timedelta(days=30)
    step = timedelta(days=30) / (instances + logs)
    clock = iter(start + step * n for n in range(instances + logs))

    ids = []
    for offset in range(0, instances, CHUNK):
        rows = []
        for n in range(offset, min(offset + CHUNK, instances)):
            moment = next(clock)
            ids.append(id_at(moment, rng))
            rows.append({
                "id": ids[-1], "created_at": moment, "updated_at": moment,
                "last_activity_at": moment,
                "site_id": sites[n % len(sites)],
                "user_id": uuid.UUID(int=rng.getrandbits(128), version=4),
                "name": name_of(n, instances),
                "instance_type": ("ubuntu", "browser", "windows")[n % 3],
                # 40% running, the rest spread over the other statuses.
                "status": "running" if rng.random() < 0.4 else rng.choice(STATUSES),
                "agent_id": None, "configuration": {"cpu": 2}, "environment_variables": {},
                "labels": labels_of(n),
            })
        insert(models.Instance, rows)

    hot = ids[0]
    levels = models.LOG_LEVELS
    for offset in range(0, logs, CHUNK):
        rows = []
        for n in range(offset, min(offset + CHUNK, logs)):
            moment = next(clock)
            rows.append({
                "id": id_at(moment, rng), "created_at": moment,
                # Every tenth log goes to the hot instance.
                "instance": hot if n % 10 == 0 else ids[rng.randrange(1, len(ids))],
                "log_type": "agent_action", "level": levels[rng.randrange(len(levels))],
                "message": f"step {n}: clicked the button", "details": {"n": n},
            })
        insert(models.InstanceLog, rows)
    models.recount_logs()
    db.close_all()
    return hot


def main(argv):
    size, path = argv
    if "://" not in path:   # a PostgreSQL URL names an empty database (bench/postgres.py)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    started = time.monotonic()
    hot = seed(size, path)
    print(f"seeded {size} into {path} in {time.monotonic() - started:.0f} s; hot instance {hot}")


if __name__ == "__main__":
    main(sys.argv[1:])
