"""Background jobs: work the server does on a schedule, never in a request
thread (the reaper, the purge, webhook delivery).

Each job is a module of this package with one class that has a `name`, an
`interval` (seconds, from the app's settings) and a `run_once()` that a test
can call directly. `jobs.runner.Runner` runs every job of an app in a thread
of its own, inside the app's context, until the server stops.

A server of several workers runs every job in one process of its own, its
jobs worker (server.run_jobs), and a server of one process runs them beside
its requests. Every host runs them too: a job stays correct when copies of
it run at once, by a conditional write on what it read or by a lease row,
as its docstring says.
"""
