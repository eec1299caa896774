"""The service's settings: their defaults, and how each INSTANCES_*
variable (or a value given to create_app) is brought to its type once, with
an error that names the variable.

Not here: building the app from them (app.py).
"""
import os
import re
from datetime import timedelta
from urllib.parse import urlsplit

from routes.access import load_tokens
from storage.engines import SYNCHRONOUS

DEFAULTS = {
    "DATABASE": "instances.db",
    "DATABASE_URL": "",
    "HOST": "127.0.0.1",
    "PORT": 8080,
    "THREADS": 8,
    # Server processes sharing the port; 0 is one per CPU this process may
    # use, at most 8 (workers.worker_count). Read by `instance-api serve`
    # only: an app embedded elsewhere is served as its host decides.
    "WORKERS": 0,
    # Requests of a process that may wait for a new log at once (CONTRACT
    # 3.3); None: half the threads. 0: none waits.
    "MAX_WAITS": None,
    "MAX_BODY_BYTES": 1 << 20,
    "MAX_HEADER_BYTES": 64 << 10,
    "BUSY_TIMEOUT": 5.0,
    "SYNCHRONOUS": "NORMAL",
    "CHANNEL_TIMEOUT": 30,
    "CONNECTION_LIMIT": 256,
    "CHECKPOINT_INTERVAL": 60.0,
    # CONTRACT 4.1, 4.2 (jobs/reaper.py, jobs/purge.py): seconds between
    # passes; retention off (empty) unless set.
    "LIFECYCLE_INTERVAL": 1.0,
    "PURGE_INTERVAL": 60.0,
    "LOG_RETENTION": "",
    "LOG_MAX_PER_INSTANCE": "",
    "ENDED_RETENTION": "",
    # Seconds a list or count may read before it is stopped (503); 0: no limit.
    "QUERY_TIMEOUT": 2.0,
    "API_TOKENS": "",
    "API_TOKENS_FILE": "",
    "ALLOW_OPEN_NETWORK": False,
    # GET /metrics and the recording behind it (docs/metrics.md).
    "METRICS": True,
    # The fleet's feeds and webhooks (feeds.py, webhooks/): how long events
    # are kept (a duration: 90s, 30m, 12h, 7d), how often the purge and the
    # delivery pass run (seconds), the first retry delay (doubling up to an
    # hour), how long an event is retried before it is given up, the CIDRs
    # webhook targets must be in (empty: any but link-local and
    # unspecified), and how many webhooks there may be.
    "EVENT_RETENTION": "7d",
    "EVENT_PURGE_INTERVAL": 60.0,
    "WEBHOOK_POLL_INTERVAL": 1.0,
    "WEBHOOK_RETRY_BASE": 1.0,
    "WEBHOOK_GIVE_UP": "24h",
    "WEBHOOK_ALLOW": "",
    "MAX_WEBHOOKS": 100,
    "API_TITLE": "Instance Management API",
    "API_VERSION": "1.0.0",
    "OPENAPI_VERSION": "3.1.0",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    # No OPENAPI_SWAGGER_UI_*: /api/docs is routes/docs.py's page, whose script
    # is a file (CSP) where flask-smorest's template has an inline one.
    "API_SPEC_OPTIONS": {
        "info": {
            "description": "Records of the remote machines (Ubuntu desktops, browsers, "
                           "Windows desktops) that AI agents drive, with each machine's "
                           "logs and plans. Every error is RFC 9457 problem JSON.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
    },
}


# Environment values arrive as text (or whatever JSON they parse as), so each
# setting is brought to its type once, with an error that names the variable.
def flag(value):
    """A yes/no setting: true/false, yes/no, on/off, 1/0 (any case)."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def synchronous(value):
    text = str(value).strip().upper()
    if text not in SYNCHRONOUS:
        raise ValueError(value)
    return text


def count(value):
    """A whole number from 0; a boolean or a fraction is no count."""
    if isinstance(value, (bool, float)):
        raise ValueError(value)
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def seconds(value):
    """A duration from 0 (a number of seconds; 0 turns a limit off)."""
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError(value)
    return number


seconds.__name__ = "number of seconds (0 or more)"


def workers_setting(value):
    """0 or "auto" (one per CPU, workers.worker_count), else how many."""
    return 0 if str(value).strip().lower() == "auto" else count(value)


workers_setting.__name__ = "worker count (a number, 0 or auto for one per CPU)"


def waits(value):
    """MAX_WAITS: a count from 0, or nothing (None or empty) for the default."""
    return None if value is None or str(value).strip() == "" else count(value)


waits.__name__ = "count of waits (0 or more)"


DURATION = re.compile(r"([0-9]+)([smhd])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value):
    """A duration: a whole number and its unit, `90s`, `30m`, `12h`, `7d` (a
    timedelta), or nothing (None or empty) for off. A bare number is
    refused: seconds or days, a mistake either way."""
    if isinstance(value, timedelta):
        return value
    text = "" if value is None else str(value).strip().lower()
    if not text:
        return None
    found = DURATION.fullmatch(text)
    if found is None or int(found[1]) == 0:
        raise ValueError(value)
    return timedelta(seconds=int(found[1]) * DURATION_UNITS[found[2]])


duration.__name__ = "duration (like 90s, 30m, 12h or 7d; empty for off)"


def required(kind):
    """`kind`, where nothing (off) is not a value."""
    def convert(value):
        converted = kind(value)
        if converted is None:
            raise ValueError(value)
        return converted
    convert.__name__ = kind.__name__.split(";")[0].rstrip(")") + ")"
    return convert


def optional_count(value):
    """A count from 1, or nothing (None or empty) for off."""
    if value is None or str(value).strip() == "":
        return None
    number = count(value)
    if number == 0:
        raise ValueError(value)
    return number


optional_count.__name__ = "count (1 or more; empty for off)"


def cidrs(value):
    from webhooks.targets import parse_allow
    parse_allow(str(value))
    return str(value)


cidrs.__name__ = "comma list of CIDRs"


def positive(kind):
    def convert(value):
        number = kind(value)
        if number <= 0:
            raise ValueError(value)
        return number
    convert.__name__ = f"positive {kind.__name__}"
    return convert


SETTING_TYPES = {
    "DATABASE": str, "DATABASE_URL": str, "HOST": str, "PORT": int,
    "THREADS": positive(int), "WORKERS": workers_setting, "MAX_WAITS": waits,
    "MAX_BODY_BYTES": positive(int), "MAX_HEADER_BYTES": positive(int),
    "BUSY_TIMEOUT": positive(float), "SYNCHRONOUS": synchronous,
    "CHANNEL_TIMEOUT": positive(int), "CONNECTION_LIMIT": positive(int),
    "CHECKPOINT_INTERVAL": positive(float), "API_TOKENS": str, "API_TOKENS_FILE": str,
    "ALLOW_OPEN_NETWORK": flag, "METRICS": flag, "QUERY_TIMEOUT": seconds,
    "LIFECYCLE_INTERVAL": positive(float), "PURGE_INTERVAL": positive(float),
    "LOG_RETENTION": duration, "LOG_MAX_PER_INSTANCE": optional_count,
    "ENDED_RETENTION": duration,
    "EVENT_RETENTION": required(duration), "EVENT_PURGE_INTERVAL": positive(float),
    "WEBHOOK_POLL_INTERVAL": positive(float), "WEBHOOK_RETRY_BASE": positive(float),
    "WEBHOOK_GIVE_UP": required(duration), "WEBHOOK_ALLOW": cidrs, "MAX_WEBHOOKS": count,
}
SECRET = ("API_TOKENS", "DATABASE_URL")  # may hold secrets: never repeated in a message


def coerce_settings(config):
    for key, kind in SETTING_TYPES.items():
        value = config[key]
        try:
            config[key] = kind(value)
        except (TypeError, ValueError):
            shown = "(hidden)" if key in SECRET else repr(value)
            raise ValueError(f"INSTANCES_{key} (or the {key} setting) is not a valid "
                             f"{kind.__name__}: {shown}") from None
    config["MAX_CONTENT_LENGTH"] = config["MAX_BODY_BYTES"]
    if config["MAX_WAITS"] is None:
        # Half the threads: the other half keeps serving everything else.
        config["MAX_WAITS"] = config["THREADS"] // 2
    try:
        config["TOKENS"] = load_tokens(config["API_TOKENS"], config["API_TOKENS_FILE"])
    except (OSError, ValueError) as exc:  # missing, a directory, not UTF-8
        raise ValueError(f"INSTANCES_API_TOKENS_FILE ({config['API_TOKENS_FILE']}) cannot "
                         f"be read: {exc}") from None
    # Fail closed: a token setting that yields no token is a mistake, not a
    # request for an open API.
    if not config["TOKENS"] and (config["API_TOKENS"].strip() or config["API_TOKENS_FILE"]):
        raise ValueError("INSTANCES_API_TOKENS or INSTANCES_API_TOKENS_FILE is set but holds "
                         "no token")


def database_target(config):
    """DATABASE_URL when set (SQLite or PostgreSQL), else the SQLite file."""
    return config["DATABASE_URL"] or config["DATABASE"]


def shown_database(config):
    """The database for a log line: a file's absolute path, or a URL
    without its password."""
    target = database_target(config)
    if "://" not in target:
        return os.path.abspath(target)
    parts = urlsplit(target)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return parts.geturl()
