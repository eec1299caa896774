"""Storage: how the service keeps its rows on SQLite or PostgreSQL, below the
tables (models.py) and above the drivers.

- `db` (here): the one database handle every module shares, bound by
  app.create_app to the engine that storage.engines opens.
- engines: opening SQLite and PostgreSQL (pragmas, pools), what "unavailable"
  means, and every other difference between the two, behind small functions.
- fields: the column types (UTC timestamps, JSON objects, canonical UUIDs).
- ids: time-ordered UUIDv7 ids.
- writes: one writer at a time per process, and group commit.
- reads: query shapes compiled once, rows read as JSON values.
- shapes: the compiled shapes kept, the most recently used (a bound).
- backup: an online copy of a SQLite file.

Nothing here knows the tables; the tables and migrations know this.
"""
from peewee import DatabaseProxy

db = DatabaseProxy()
