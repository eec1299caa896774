"""The one runner the background jobs share: a thread per job, calling its
`run_once()` every `interval` seconds inside the app's context, until
`stop()`.

A pass that fails is logged and the job runs again at its next interval: a
database that is away for a while (a PostgreSQL restart, a locked file)
delays a job, never ends it. `stop()` wakes every thread at once; a pass in
progress finishes its current transaction (jobs work in small ones) and
the thread ends, so a server stops within a pass's length.
"""
import logging
import threading
import time

from storage import db

log = logging.getLogger("instance_api")


class Runner:
    """Runs `jobs` for `app`; `start()` once per process (after a fork:
    threads do not survive one), `stop()` at shutdown."""

    def __init__(self, app, jobs):
        self.app, self.jobs = app, list(jobs)
        self.stopping = threading.Event()
        self.threads = []

    def start(self):
        for job in self.jobs:
            thread = threading.Thread(target=self.repeat, args=(job,),
                                      name=f"job-{job.name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def repeat(self, job):
        while not self.stopping.wait(job.interval):
            self.run(job)

    def run(self, job):
        """One pass of `job`, errors logged rather than raised."""
        try:
            with self.app.app_context():
                try:
                    job.run_once()
                finally:
                    # As at the end of a request: the pooled connection goes
                    # back, SQLite's thread connection is kept, rolled back.
                    db.release()
        except Exception:
            log.exception("Background job %s failed; it runs again in %g s",
                          job.name, job.interval)

    def stop(self, timeout=5.0):
        """Ask every job to stop and wait up to `timeout` seconds in all."""
        self.stopping.set()
        for job in self.jobs:
            # A job with work in threads of its own (webhook delivery) is told too.
            if hasattr(job, "stop"):
                job.stop()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.threads = []
