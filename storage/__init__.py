"""Storage: how the service keeps its rows on SQLite or PostgreSQL, below the
tables (models.py) and above the drivers.

- `db` (here): the one database handle every module shares. Each app made
  by app.create_app has a database of its own (storage.engines opens it);
  `db` is the current app's (AppDatabase).
- engines: opening SQLite and PostgreSQL (pragmas, pools), what "unavailable"
  means, and every other difference between the two, behind small functions.
- fields: the column types (UTC timestamps, JSON objects, canonical UUIDs).
- ids: time-ordered UUIDv7 ids.
- writes: one writer at a time per process, and group commit.
- counters: instances by status and type, kept by triggers.
- reads: query shapes compiled once, rows read as JSON values.
- shapes: the compiled shapes kept, the most recently used (a bound).
- backup: an online copy of a SQLite file.

Nothing here knows the tables; the tables and migrations know this.
"""
from contextvars import ContextVar

from peewee import DatabaseProxy, Model

# The database of the app serving this thread's request: set by the app's
# WSGI middleware (app.Traced) for the length of each request, and by a
# thread that works for one app (the log watcher, storage.tail).
current = ContextVar("instance_api.database", default=None)


class AppDatabase(DatabaseProxy):
    """peewee's database proxy, resolved on each use: to the database of
    the request being served (`current`), else to that of the app whose
    context is pushed (`in_context`, which app.py sets: a background job's,
    `with app.app_context()`), else to that of the app made last (`latest`,
    set by `initialize`: command-line tools, the server's own threads). So
    several apps in one process each use their own database, and every
    module keeps writing `db.<anything>`.

    Every query goes through here: a request pays one ContextVar read per
    use, as cheap as the plain proxy's attribute read, and one set and
    reset in all (bench/README.md)."""

    __slots__ = ("latest", "in_context")

    def __init__(self):
        object.__setattr__(self, "_callbacks", [])
        object.__setattr__(self, "latest", None)
        object.__setattr__(self, "in_context", _nothing)

    def resolve(self):
        """The database `db` stands for here and now (None before any app)."""
        database = current.get()
        if database is None:
            database = self.in_context()
            if database is None:
                database = self.latest
        return database

    obj = property(resolve)

    def initialize(self, obj):
        object.__setattr__(self, "latest", obj)
        for callback in self._callbacks:
            callback(obj)

    def __getattr__(self, attr):
        database = current.get()
        if database is None:
            database = self.resolve()
            if database is None:
                raise AttributeError(f"no database for db.{attr}: no app was created")
        return getattr(database, attr)

    def __setattr__(self, attr, value):
        if attr != "in_context":
            raise AttributeError("Cannot set attribute on proxy.")
        object.__setattr__(self, attr, value)

    @property
    def Model(self):
        try:
            return object.__getattribute__(self, "_Model")
        except AttributeError:
            class Meta:
                database = self
            object.__setattr__(self, "_Model", type("BaseModel", (Model,), {"Meta": Meta}))
            return self._Model


def _nothing():
    return None


db = AppDatabase()
