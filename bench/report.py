"""The report of a benchmark run (bench/run.py): medians over rounds, the
table of every cell, the floors met or not, flatness between sizes, where
PocketBase stands, and the chart: bench/RESULTS.md, results.json and
results.png."""
import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import floors
import live_tail
import postgres

HERE = Path(__file__).resolve().parent
CONCURRENCY = floors.CONCURRENCY
BATCH = floors.BATCH   # logs per batch_ingest request
# Run by PocketBase as well (and by the default server, with the other lists).
COMPARED = ("get_one", "list_filtered", "create_instance", "append_log")
# Run by the default server at 32 connections: the reads and writes of the
# default-against-one-process floors, and SQLite's side of PostgreSQL's.
DEFAULT_OPS = ("get_one", *floors.LISTS, "create_instance", "append_log")
# Operations whose rate should not fall with the size of the data: the
# large dataset's rate over the small one's (the flatness line of RESULTS.md).
FLAT = floors.FLAT


def medians(samples):
    table = {}
    for sample in samples:
        table.setdefault((sample["size"], sample["op"], sample["c"]), []).append(sample)
    return {key: {
        "rps": statistics.median(s["rps"] for s in runs),
        "p50": statistics.median(s["p50"] for s in runs),
        "p99": statistics.median(s["p99"] for s in runs),
        "non_2xx": sum(s["non_2xx"] for s in runs),
        # webhook: cells (fleet.py): whether every round's events all arrived.
        "complete": all(s.get("complete", True) for s in runs),
        "rows": runs[0]["rows"],
    } for key, runs in table.items()}


def report(samples, rss, args, tail=None, extra=None):
    """`extra`: the measures that are not wrk cells, by name (lifecycle.py's
    purge and reaper, handler.py's), each with its section and floor rows."""
    table = medians(samples)
    extra = extra or {}
    (HERE / "results.json").write_text(json.dumps(
        {"samples": samples, "peak_rss_mb": rss, "threads": args.threads, "tail": tail,
         "extra": extra}, indent=1))
    # Runs before issue 19 kept one figure per size.
    rss = {size: mb if isinstance(mb, dict) else {"one": mb} for size, mb in rss.items()}
    workers = next((mb["workers"] for mb in rss.values() if "workers" in mb), None)
    processes = (f"{workers} worker processes here, one per CPU" if workers
                 else "one worker process per CPU")
    machine = (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, "
               f"Python {platform.python_version()}, load generator (wrk -t2) on the same host")
    lines = [
        "# Benchmark results", "",
        f"One run of `make bench` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{machine}. {args.rounds} rounds of {args.seconds} s per cell, medians; "
        "the ceilings ran in the same rounds on the same waitress settings "
        f"({args.threads} threads) and GIL switch interval; each cell started once the "
        "server had answered what the previous one left queued. The service ran with "
        "`--workers 1`; `default:` rows are the same server with its default "
        f"({processes}, and its jobs worker) at 32 "
        "connections; `nometrics:` "
        "is one process with INSTANCES_METRICS=0, `noactivity:` one process on a copy whose "
        "log trigger records no activity (bench/lifecycle.py); `pg:`, `pg-default:` and "
        "`pg-two:` rows are PostgreSQL (one worker, the default, two servers of one worker "
        "on one database: bench/postgres.py); `webhook:` the default with a webhook "
        "delivering every event, counted until its receiver has them all (bench/fleet.py); "
        "`pocketbase:` "
        "rows are PocketBase (bench/peer.py) on the same rows.", "",
        "![req/s per operation](results.png)", "",
        "| size | operation | conc. | req/s | rows/s | p50 ms | p99 ms | non-2xx "
        "| x bare Flask |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (size, op, c), cell in sorted(table.items()):
        ceiling = table[(size, "ceiling_flask", c)]["rps"]
        lines.append(
            f"| {size} | {op} | {c} | {cell['rps']:.0f} | {cell['rps'] * cell['rows']:.0f} "
            f"| {cell['p50']:.1f} | {cell['p99']:.1f} | {cell['non_2xx']} "
            f"| {cell['rps'] / ceiling:.2f} |")
    lines += ["", "Peak RSS: " + "; ".join(
        f"{size}: one process {mb['one']} MB"
        + (f", the default ({mb['workers']} workers, their jobs worker and their parent) "
           f"{mb['default']} MB "
           f"(each process's peak, added up; their summed PSS peaked at "
           f"{mb['default_pss']} MB)" if "default" in mb else "")
        + (f", PocketBase {mb['pocketbase']} MB" if "pocketbase" in mb else "")
        for size, mb in rss.items()), ""]
    import handler
    import lifecycle
    sections = [module.section(extra[name]) for name, module in (
        ("lifecycle", lifecycle), ("handler", handler)) if extra.get(name)]
    lines += floors.section(table, rss, [row for rows, _ in sections for row in rows])
    lines += stack_lines(table)
    lines += flatness_lines(table)
    lines += postgres.section(table)
    lines += peer_table(table, workers)
    for _, text in sections:
        lines += ["", *text]
    if tail is not None:
        lines += ["", *live_tail.section(tail)]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    chart(table)
    print("\n".join(lines))


def stack_lines(table):
    """What the service's stack reaches by itself (ceilings.smorest_query,
    smorest_insert: a plain flask-smorest route and marshmallow schemas)
    against the references the floors use, and the service against it."""
    pairs = [("ceiling_smorest_query", "ceiling_flask", "the plain stack's read x bare Flask"),
             ("get_one", "ceiling_smorest_query", "get_one x the plain stack's read"),
             ("ceiling_smorest_insert", "ceiling_flask_insert",
              "the plain stack's append x the write reference"),
             ("append_log", "ceiling_smorest_insert", "append_log x the plain stack's append"),
             ("create_instance", "ceiling_smorest_insert",
              "create_instance x the plain stack's append")]
    rows = []
    for size in sorted({cell_size for cell_size, _, _ in table}):
        for c in CONCURRENCY:
            for mine, theirs, name in pairs:
                top, bottom = table.get((size, mine, c)), table.get((size, theirs, c))
                if top and bottom:
                    rows.append(f"| {name} | {size} | {c} | {top['rps'] / bottom['rps']:.2f} |")
    if not rows:
        return []
    return ["## What the stack reaches by itself", "",
            "The same read and append as a bare flask-smorest route with plain marshmallow "
            "schemas, as that stack's docs write one (bench/ceilings.py), in the same rounds: "
            "where the first and third rows are below a floor above, no route written that "
            "way reaches the floor either.", "",
            "| ratio | size | conc. | measured |", "|---|---|---|---|", *rows, ""]


def flatness(table, op, c):
    return table[("large", op, c)]["rps"] / table[("small", op, c)]["rps"]


def flatness_lines(table):
    """Large over small, per operation and concurrency: 1.00 is a rate that
    does not fall with a hundred times the data. The unfiltered count reads
    every instance's status index entry, so it is not expected to be flat."""
    ops = [op for op in (*FLAT, "counts_by_status")
           if all((size, op, c) in table for size in ("small", "large") for c in CONCURRENCY)]
    if not ops:
        return []
    cells = "; ".join(
        f"{op} " + ", ".join(f"c={c} {flatness(table, op, c):.2f}" for c in CONCURRENCY)
        for op in ops)
    return [f"Flatness (large req/s / small req/s): {cells}. counts_by_status counts every "
            "instance (by the status index), so it grows with the data; counts of one site "
            "read that site's entries only.", ""]


def peer_table(table, workers):
    """Where the service stands against PocketBase, per operation and size."""
    rows = sorted((size, op.split(":", 1)[1], c) for size, op, c in table
                  if op.startswith("pocketbase:"))
    if not rows:
        return []
    lines = ["## Against PocketBase", "",
             "PocketBase (Go, bench/peer.py) on the same rows, with the same operations: a record "
             "by id, a filtered page of 50 with its total, creating an instance, appending a "
             "log. It uses every core on its own.", "",
             "| size | operation | conc. | PocketBase req/s | ours, one process | "
             "ours / PocketBase | ours, default | default / PocketBase |",
             "|---|---|---|---|---|---|---|---|"]
    behind = []
    for size, op, c in rows:
        theirs = table[(size, f"pocketbase:{op}", c)]["rps"]
        one = table.get((size, op, c), {}).get("rps")
        default = table.get((size, f"default:{op}", c), {}).get("rps")
        shown = [f"{one:.0f} | {one / theirs:.2f}" if one else "| ",
                 f"{default:.0f} | {default / theirs:.2f}" if default else "| "]
        lines.append(f"| {size} | {op} | {c} | {theirs:.0f} | {shown[0]} | {shown[1]} |")
        best = max(one or 0, default or 0)
        if best < theirs:
            behind.append(f"{op} ({size}, {c} connections: {best / theirs:.2f})")
    lines += ["", ("PocketBase is ahead of the service's best here in: " + "; ".join(behind)
                   + ".") if behind else "The service's best is at or ahead of PocketBase in "
                                         "every cell.", ""]
    return lines


def chart(table):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({size for size, _, _ in table})
    # The service's own cells, its default's, PostgreSQL's one worker and
    # PocketBase's: the other servers' are in the tables.
    ops = [op for op in dict.fromkeys(op for _, op, _ in sorted(table, key=lambda k: k[1]))
           if not op.startswith(("ceiling", "nometrics:", "noactivity:", "pg-", "webhook:"))]
    fig, axes = plt.subplots(len(CONCURRENCY), 1, figsize=(12, 5.5 * len(CONCURRENCY)))
    for ax, c in zip(axes, CONCURRENCY):
        width = 0.8 / len(sizes)
        for i, size in enumerate(sizes):
            values = [table.get((size, op, c), {}).get("rps", 0) for op in ops]
            ax.bar([x + i * width for x in range(len(ops))], values, width, label=size)
            for kind, style in (("ceiling_flask", "--"), ("ceiling_wsgi", ":"),
                                ("ceiling_flask_query", "-."),
                                ("ceiling_flask_insert", (0, (1, 1)))):
                if (size, kind, c) in table:   # runs before the query reference lack it
                    ax.axhline(table[(size, kind, c)]["rps"], linestyle=style, linewidth=1,
                               color=f"C{i}", label=f"{kind} ({size})")
        ax.set_xticks([x + width * (len(sizes) - 1) / 2 for x in range(len(ops))], ops,
                      rotation=20)
        ax.set_ylabel("requests/s (median)")
        ax.set_title(f"concurrency {c}")
        ax.legend(fontsize=8, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.22))
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=90)
