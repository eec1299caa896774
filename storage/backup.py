"""An online backup of a SQLite file: a consistent copy while servers keep
writing to it, checked before it is reported done."""
import os
import sqlite3


class BackupFailed(Exception):
    pass


def backup(source, target, progress=None):
    """Copy the database at `source` into a new file `target` while servers
    keep writing to it, check the copy, and return its size in pages.

    VACUUM INTO reads one snapshot (in WAL mode writers go on meanwhile) and
    writes a compact copy; SQLite's page-by-page backup API would restart
    from the beginning after every write by another connection, and might
    never finish under steady writes. `progress(done, total)` is called as
    the copy grows (in pages), at most once per percent.
    """
    if os.path.exists(target):
        raise BackupFailed(f"{target} already exists; name a new file")
    if not os.path.isfile(source):
        raise BackupFailed(f"there is no database at {source}")
    conn = sqlite3.connect(source, timeout=30)
    try:
        page_size, pages, free = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                                  for name in ("page_size", "page_count", "freelist_count"))
        total, shown = max(pages - free, 1), [-1]

        def report():
            done = min(os.path.getsize(target) // page_size, total) if os.path.exists(target) else 0
            if done * 100 // total > shown[0]:
                shown[0] = done * 100 // total
                progress(done, total)
            return 0  # go on

        if progress:
            conn.set_progress_handler(report, 100_000)
        conn.execute("VACUUM INTO ?", (str(target),))
    finally:
        conn.close()
    copy = sqlite3.connect(target)
    try:
        checked = copy.execute("PRAGMA integrity_check").fetchall()
        copied = copy.execute("PRAGMA page_count").fetchone()[0]
    finally:
        copy.close()
    if checked != [("ok",)]:
        raise BackupFailed(f"the copy at {target} fails integrity_check: {checked[:5]}")
    if progress:
        progress(total, total)
    return copied
