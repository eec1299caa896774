"""Leases: a job that one process at a time should do (of every worker
and every host on one database) takes a lease row before it starts, renews
it while it works and gives it back when it is done.

A row per job in `job_lease` (name, owner, lease_until), taken with a
conditional UPDATE (free, lapsed, or already this owner's), as a webhook's
delivery lease is (webhooks/delivery.py): of two processes asking at once,
one UPDATE changes the row and the other finds its condition false (on
PostgreSQL the second waits for the first's row lock and reads the row
again). A lease not renewed lapses after its duration, so the job of a
process that died is taken over by another within that time.

A table, rather than an advisory lock, because it works the same on both
engines (SQLite has no lock of that kind across processes, and its single
writer makes copies of a job take turns rather than stand aside), it needs
no session-long connection (a pooled connection goes back between
transactions), and who holds it and until when can be read. It came with
schema version 12 (create_tables adds the missing table).
"""
import os
import socket
import time
import uuid
from datetime import timedelta

from peewee import Model, TextField

from storage import db
from storage.fields import UTCDateTimeField, utcnow
from storage.writes import write


DURATION = timedelta(seconds=30)


class JobLease(Model):
    name = TextField(primary_key=True)
    owner = TextField(null=True)
    lease_until = UTCDateTimeField(null=True)

    class Meta:
        database = db
        table_name = "job_lease"


def process_owner():
    """Who a lease names: host, process, and a nonce (a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseLost(Exception):
    """Another process holds the lease now: this one's lapsed."""


class Lease:
    """The lease of job `name`, for `owner`, `duration` long; renewed by
    `keep()` once a third of it has passed."""

    def __init__(self, name, owner=None, duration=DURATION):
        self.name, self.duration = name, duration
        self.given, self.made = owner, None
        self.renewed = None    # time.monotonic() of the last take or renewal

    @property
    def owner(self):
        """The owner given, else this process's own: made again in a
        process forked from the one that made it (a worker), which must not
        pass for its parent or its siblings."""
        if self.given is not None:
            return self.given
        if self.made is None or self.made[0] != os.getpid():
            self.made = os.getpid(), process_owner()
        return self.made[1]

    def take(self):
        """True when this owner holds the lease now (taken or renewed)."""
        now = utcnow()
        with write():
            taken = JobLease.update(owner=self.owner, lease_until=now + self.duration).where(
                JobLease.name == self.name,
                JobLease.lease_until.is_null() | (JobLease.lease_until < now)
                | (JobLease.owner == self.owner)).execute()
            if not taken:
                # The first time this job runs on this database: no row yet.
                taken = JobLease.insert(name=self.name, owner=self.owner,
                                        lease_until=now + self.duration
                                        ).on_conflict_ignore().as_rowcount().execute()
        if taken:
            self.renewed = time.monotonic()
        return bool(taken)

    def keep(self):
        """Renew the lease when a third of it has passed; LeaseLost when
        another process has taken it meanwhile (this one lapsed)."""
        if time.monotonic() - self.renewed < self.duration.total_seconds() / 3:
            return
        if not self.take():
            raise LeaseLost(f"the {self.name} lease was taken by another process")

    def release(self):
        with write():
            JobLease.update(owner=None, lease_until=None).where(
                JobLease.name == self.name, JobLease.owner == self.owner).execute()
        self.renewed = None

    def holder(self):
        """(owner, lease_until) of a lease held now, else None."""
        row = JobLease.get_or_none(JobLease.name == self.name)
        if row is None or row.owner is None or row.lease_until < utcnow():
            return None
        return row.owner, row.lease_until
