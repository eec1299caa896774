"""The floors of a benchmark run (bench/run.py), each a ratio within the run
(medians over rounds), checked cell by cell and summed up one line per
target: the range measured over its cells (sizes, concurrencies) and met
only when every cell meets it. A target whose cells this run lacks is left
out (a run with --ops, or without --engine postgresql).

Since issue 26 the per-process floors are set against the plain stack
measured in the same rounds (ceiling_smorest_query, ceiling_smorest_insert:
a bare flask-smorest route with plain marshmallow schemas), replacing issue
19's get_one >= 0.6 x bare Flask and writes >= 0.9/1.0 x the write reference
(ceiling_flask_insert), which that stack itself does not reach.
"""
CONCURRENCY = (8, 32)
BATCH = 1000
# Pages of rows, each held to 0.3 x bare Flask (issues 16, 19, 26).
LISTS = ("list_filtered", "list_logs", "list_by_label", "list_q", "tail_depth_0")
# Operations whose rate should not fall with the size of the data.
FLAT = ("list_filtered", "list_logs", "list_by_label", "counts_by_status_site", "list_q")
# The counts kept by counters since issue 26 (item 2): flat within 0.9.
COUNTED = ("counts_by_status",)
# The fleet's log list, filtered (issue 24): flat within 0.9.
FLEET = ("fleet_by_label", "fleet_errors")
READS = ("get_one", *LISTS)
WRITES = ("create_instance", "append_log")


def deep_tail(table, size):
    return next((op for s, op, _ in table if s == size and op.startswith("tail_depth_")
                 and op != "tail_depth_0"), None)


def checks(table, rss):
    """(target, cell, measured, at least) for every cell this run has."""
    found = []
    sizes = sorted({size for size, _, _ in table})

    def rps(size, op, c):
        cell = table.get((size, op, c))
        return cell and cell["rps"]

    def ratio(size, op, c, reference):
        mine, theirs = rps(size, op, c), rps(size, reference, c)
        return mine / theirs if mine and theirs else None

    def check(target, size, c, value, least, op=None):
        """`op`: named in the cell, for a target over several operations."""
        if value is not None:
            found.append((target, f"{op + ' ' if op else ''}{size} c={c}", value, least))

    for size in sizes:
        deep = deep_tail(table, size)
        lists = [*LISTS, deep] if deep else list(LISTS)
        for c in CONCURRENCY:
            # Issue 26 item 5: against the plain stack, per process.
            check("get_one >= 0.9 x ceiling_smorest_query", size, c,
                  ratio(size, "get_one", c, "ceiling_smorest_query"), 0.9)
            for op in WRITES:
                check(f"{op} >= 1.0 x ceiling_smorest_insert", size, c,
                      ratio(size, op, c, "ceiling_smorest_insert"), 1.0)
            for op in lists:
                check("every list >= 0.3 x bare Flask", size, c,
                      ratio(size, op, c, "ceiling_flask"), 0.3, op)
            check("/metrics on: get_one >= 0.95 x without metrics", size, c,
                  ratio(size, "get_one", c, "nometrics:get_one"), 0.95)
            # Issue 23 item 5: the activity recording in the log trigger.
            check("append_log >= 0.9 x without activity recording", size, c,
                  ratio(size, "append_log", c, "noactivity:append_log"), 0.9)
            # Issue 24: create_instance while a webhook delivers every event,
            # counted until the receiver has them all (fleet.py).
            hooked = table.get((size, "webhook:create_instance", c))
            check("create_instance with a webhook delivering every event >= 0.85 x without",
                  size, c, ratio(size, "webhook:create_instance", c, "default:create_instance"),
                  0.85)
            if hooked:
                check("webhook: the receiver had every event within a minute of each cell",
                      size, c, 1.0 if hooked["complete"] else 0.0, 1.0)
            # Issue 19 (kept: nothing in issue 26 replaces it).
            logs = rps(size, "batch_ingest", c)
            check("batch ingest >= 8 logs per bare-Flask request (issue 19)", size, c,
                  logs and rps(size, "ceiling_flask", c)
                  and logs * BATCH / rps(size, "ceiling_flask", c), 8)
            # Issue 6: the deep page within 1.2 x the first.
            shallow = rps(size, "tail_depth_0", c)
            check("deep tail page x 1.2 / first page >= 1 (issue 6)", size, c,
                  shallow and deep and rps(size, deep, c)
                  and rps(size, deep, c) * 1.2 / shallow, 1.0)
        # The default worker count against one process (issue 19, kept by 26).
        for op in READS:
            check("default reads >= 1.4 x one process", size, 32,
                  ratio(size, f"default:{op}", 32, op), 1.4, op)
        for op in WRITES:
            check("default writes >= 1.1 x one process", size, 32,
                  ratio(size, f"default:{op}", 32, op), 1.1, op)
        # Issue 26 item 3/5: PostgreSQL in the same run.
        check("PostgreSQL default get_one >= 0.8 x SQLite's default", size, 32,
              ratio(size, "pg-default:get_one", 32, "default:get_one"), 0.8)
        for op in LISTS:
            check("PostgreSQL default lists >= 0.6 x SQLite's default", size, 32,
                  ratio(size, f"pg-default:{op}", 32, f"default:{op}"), 0.6, op)
        for op in WRITES:
            check("PostgreSQL default writes >= 0.9 x SQLite's default", size, 32,
                  ratio(size, f"pg-default:{op}", 32, f"default:{op}"), 0.9, op)
        for op in ("get_one", "list_filtered", *WRITES):
            # pg-2w: a server of 2 workers, run when the default is not 2.
            two = "pg-2w" if (size, f"pg-2w:{op}", 32) in table else "pg-default"
            check("PostgreSQL, two servers of 1 worker >= 0.9 x one of 2 workers", size, 32,
                  ratio(size, f"pg-two:{op}", 32, f"{two}:{op}"), 0.9, op)
    if "small" in sizes and "large" in sizes:
        for c in CONCURRENCY:
            for op in FLAT:
                small = rps("small", op, c)
                check("flat: large >= 0.8 x small (filtered lists, site counts, q)", "both", c,
                      small and rps("large", op, c) and rps("large", op, c) / small, 0.8, op)
            for op in FLEET:
                small = rps("small", op, c)
                check("flat: fleet log list large >= 0.9 x small (issue 24)", "both", c,
                      small and rps("large", op, c) and rps("large", op, c) / small, 0.9, op)
            for op in COUNTED:
                small = rps("small", op, c)
                check("flat: unfiltered counts large >= 0.9 x small (issue 26)", "both", c,
                      small and rps("large", op, c) and rps("large", op, c) / small, 0.9, op)
    return found


def errors(table, prefix_ok=("ceiling", "pocketbase:")):
    """non-2xx answers of the service's cells at 32 connections, per size."""
    sizes = sorted({size for size, _, _ in table})
    return {size: sum(cell["non_2xx"] for (s, op, c), cell in table.items()
                      if s == size and c == 32 and not op.startswith(prefix_ok))
            for size in sizes}


def summary(found):
    """One line per target: the range measured and met or not."""
    targets = {}
    for target, cell, value, least in found:
        targets.setdefault(target, []).append((cell, value, least))
    lines = ["| target | cells | measured | met |", "|---|---|---|---|"]
    for target, cells in targets.items():
        values = [value for _, value, _ in cells]
        short = [f"{cell} {value:.2f}" for cell, value, least in cells if value < least]
        shown = (f"{min(values):.2f}" if len(values) == 1
                 else f"{min(values):.2f}-{max(values):.2f}")
        met = "yes" if not short else f"**no** ({'; '.join(short)})"
        lines.append(f"| {target} | {len(cells)} | {shown} | {met} |")
    return lines


def section(table, rss, extra_rows=()):
    """The Floors section of RESULTS.md: the summary, the other targets
    (`extra_rows`: already formatted summary rows), then every cell."""
    found = checks(table, rss)
    lines = ["## Floors", "",
             "Ratios within this run (medians over the rounds). Per process (`--workers 1`) "
             "against the plain stack in the same rounds (ceiling_smorest_query/insert: a bare "
             "flask-smorest route with plain marshmallow schemas) and the bare-Flask ceiling; "
             "the default worker count against one process; PostgreSQL against SQLite. One "
             "line per target: the range over its cells, met only when every cell meets it "
             "(those below are named).", "", *summary(found)]
    lines += extra_rows
    for size, count in errors(table).items():
        lines.append(f"| zero non-2xx at 32 connections (the service's cells), {size} | | "
                     f"{count} | {'yes' if count == 0 else '**no**'} |")
    for size, mb in rss.items():
        if "default" in mb:
            per = mb["default"] / mb["workers"]
            lines.append(f"| peak RSS, default: all processes <= 100 MB per worker, {size} | | "
                         f"{mb['default']} MB ({per:.0f} per worker) | "
                         f"{'yes' if per <= 100 else '**no**'} |")
    lines += ["", "<details><summary>Every cell of the floors</summary>", "",
              "| target | cell | measured | at least | met |", "|---|---|---|---|---|"]
    for target, cell, value, least in found:
        lines.append(f"| {target} | {cell} | {value:.2f} | {least} | "
                     f"{'yes' if value >= least else '**no**'} |")
    return lines + ["", "</details>", ""]
