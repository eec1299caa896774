"""PostgreSQL in the benchmark (issue 26, item 3): the same datasets seeded
into databases of their own on the server of --postgres-url (never the
database the tests use), and the servers run.py starts on them.

Each size is seeded once through bench/seed.py (the models in bulk, as for
SQLite) into `bench_SIZE_seeding`, renamed `bench_SIZE_<seed>_v<schema>`
once complete, and kept: a run copies it with CREATE DATABASE ... TEMPLATE
(a file copy, seconds even at the large size) into `bench_SIZE`, which the
run's writes then change. A seed made by another schema version or seed.py
is made again.

The servers: `pg:` one worker, `pg-default:` the default worker count, and
`pg-two:` two servers of one worker each on two ports over the one
database, a stand-in for two hosts (wrk drives both at once, half the
connections each, and their figures are summed: run.wrk_pair). When the
default is not two workers, `pg-2w:` is a server of two, what two servers
are compared with.
"""
import subprocess
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run per process at 8 and 32 connections, and by the default at 32
# (tail_depth_N: the deep tail page, named by its depth at run time).
OPS = ("get_one", "list_filtered", "list_logs", "list_by_label", "list_q", "tail_depth_0",
       "tail_depth_N", "create_instance", "append_log", "batch_ingest")
# Run by two servers at once, against one server of two workers.
TWO_OPS = ("get_one", "list_filtered", "create_instance", "append_log")


def admin(base_url):
    import psycopg
    try:
        return psycopg.connect(f"{base_url}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL does not answer at {base_url} ({exc}); start it, or "
                         "run bench/run.py --engines sqlite") from exc


def seeded(size, base_url, seed_name, schema_version):
    """The URL of a fresh working copy of the size's seeded database."""
    # "_vacuumed": seeds made before vacuum() are made again.
    pristine = f"bench_{size}_{seed_name}_v{schema_version}_vacuumed"
    with admin(base_url) as conn:
        names = {name for name, in conn.execute("SELECT datname FROM pg_database")}
        if pristine not in names:
            # Older seeds of this size go: each holds a copy of the dataset.
            for old in sorted(names):
                if old.startswith(f"bench_{size}_") and old != f"bench_{size}_seeding":
                    conn.execute(f'DROP DATABASE "{old}"')
            conn.execute(f"DROP DATABASE IF EXISTS bench_{size}_seeding")
            conn.execute(f"CREATE DATABASE bench_{size}_seeding")
            subprocess.run([sys.executable, str(HERE / "seed.py"), size,
                            f"{base_url}/bench_{size}_seeding"], check=True)
            vacuum(f"{base_url}/bench_{size}_seeding")
            conn.execute(f'ALTER DATABASE bench_{size}_seeding RENAME TO "{pristine}"')
        conn.execute(f"DROP DATABASE IF EXISTS bench_{size} WITH (FORCE)")
        conn.execute(f'CREATE DATABASE bench_{size} TEMPLATE "{pristine}"')
    return f"{base_url}/bench_{size}"


def vacuum(url):
    """What autovacuum would have done to a database in service: the seed
    leaves the instance table seven parts dead in eight (recount_logs
    rewrites every row), no visibility map and no planner statistics, and
    autovacuum never sees the copies, which start with their counters at
    zero. The filtered list then read 400 heap rows for its 98 (5.4 ms
    against 0.2 ms, EXPLAIN ANALYZE, small). The template keeps both."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def pick(url):
    """run.pick's ids, read from the PostgreSQL copy (its own uuid7 ids)."""
    import psycopg
    with psycopg.connect(url) as conn:
        hot, hot_logs = conn.execute(
            "SELECT instance_id, COUNT(*) FROM instance_log GROUP BY instance_id "
            "ORDER BY 2 DESC LIMIT 1").fetchone()
        other = conn.execute("SELECT id FROM instance WHERE id != %s ORDER BY created_at "
                             "LIMIT 1 OFFSET 10", (hot,)).fetchone()[0]
        site = conn.execute("SELECT site_id FROM instance ORDER BY created_at "
                            "LIMIT 1").fetchone()[0]
        first = conn.execute("SELECT id FROM instance_log WHERE instance_id = %s "
                             "ORDER BY seq LIMIT 1", (hot,)).fetchone()[0]
        deep = conn.execute("SELECT id FROM instance_log WHERE instance_id = %s "
                            "ORDER BY seq DESC LIMIT 1 OFFSET 50", (hot,)).fetchone()[0]
    return (*(str(uuid.UUID(str(value))) for value in (hot, other, site, first, deep)),
            hot_logs)


def drop(base_url, size):
    """The working copy goes after the run (the seed stays)."""
    with admin(base_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS bench_{size} WITH (FORCE)")


def section(table):
    """RESULTS.md's PostgreSQL table: each operation on both engines, one
    worker and the default, and two servers of one worker each."""
    sizes = sorted({size for size, op, _ in table if op.startswith("pg")})
    if not sizes:
        return []

    def rps(size, op, c):
        cell = table.get((size, op, c))
        return cell and cell["rps"]

    def alone(value):
        return f"{value:.0f}" if value else ""

    def shown(mine, theirs):
        if not mine:
            return "| "
        return f"{mine:.0f} | {mine / theirs:.2f}" if theirs else f"{mine:.0f} | "
    lines = ["## PostgreSQL", "",
             "The same datasets seeded into a database of their own on the PostgreSQL of "
             "this host (bench/postgres.py), served by the same server: `pg:` one worker, "
             "`pg-default:` the default worker count, `pg-two:` two servers of one worker "
             "each on two ports over the one database (a stand-in for two hosts; wrk drives "
             "both at once, half the connections each, and the rates are summed). Each "
             "ratio is PostgreSQL over SQLite in the same rounds. `ceiling_flask_query` is "
             "the reference of the least read, a bare Flask route and one SELECT by primary "
             "key (bench/ceilings.py), on each engine: what PostgreSQL costs a read on this "
             "host before any of the service's own work.", "",
             "| size | operation | conc. | SQLite, 1 worker | PostgreSQL, 1 worker | x SQLite "
             "| SQLite default | PostgreSQL default | x SQLite | PostgreSQL, two servers "
             "| x one of 2 workers |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        ops = dict.fromkeys(op.split(":", 1)[1] for s, op, _ in sorted(table)
                            if s == size and op.startswith("pg:"))
        for op in ops:
            for c in (8, 32):
                if not rps(size, f"pg:{op}", c) and not rps(size, f"pg-default:{op}", c):
                    continue
                two = "pg-2w" if rps(size, f"pg-2w:{op}", c) else "pg-default"
                lines.append(
                    f"| {size} | {op} | {c} | {alone(rps(size, op, c))} | "
                    f"{shown(rps(size, f'pg:{op}', c), rps(size, op, c))} | "
                    f"{alone(rps(size, f'default:{op}', c))} | "
                    f"{shown(rps(size, f'pg-default:{op}', c), rps(size, f'default:{op}', c))}"
                    f" | {shown(rps(size, f'pg-two:{op}', c), rps(size, f'{two}:{op}', c))} |")
    return lines + [""]
