"""Ids: time-ordered UUIDs (version 7), made as the API writes them."""
import os
import threading
import time
import uuid

_uuid7_lock = threading.Lock()
_uuid7_last = 0
# Random bytes for ids, drawn from the OS 4 KiB at a time: os.urandom is a
# system call, and each one gives up the GIL, which a batch of 1,000 logs
# did 1,000 times. A forked worker draws its own: sharing its parent's
# bytes, two workers could make the same id in the same millisecond.
_entropy = memoryview(b"")


def _draw_afresh():
    global _entropy
    _entropy = memoryview(b"")


os.register_at_fork(after_in_child=_draw_afresh)


def uuid7():
    """A time-ordered UUID (RFC 9562, version 7), monotonic within a process.

    The 48-bit millisecond clock leads, so new rows append to the primary-key
    index and ids sort by creation. When two ids fall in one millisecond (or
    the clock steps back) the 122 free bits are bumped by one instead, which
    keeps them strictly increasing.
    """
    return uuid.UUID(int=_uuid7_bits())


def new_id():
    """uuid7() as the API writes it (lower-case, dashed), made without the
    UUID object: a new row's id is bound and written out as text, and
    creating the object and turning it into text twice was a tenth of a
    batch of logs (CanonicalUUIDField.db_value takes such text as it is)."""
    digits = f"{_uuid7_bits():032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _uuid7_bits():
    global _uuid7_last, _entropy
    now = time.time_ns() // 1_000_000
    with _uuid7_lock:
        if len(_entropy) < 10:
            _entropy = memoryview(os.urandom(4096))
        candidate = now << 74 | int.from_bytes(_entropy[:10]) >> 6
        _entropy = _entropy[10:]
        value = _uuid7_last = max(candidate, _uuid7_last + 1)
    ms, rand_a, rand_b = value >> 74, (value >> 62) & 0xFFF, value & ((1 << 62) - 1)
    return ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b


def floor_id(moment):
    """The lowest UUIDv7 of the millisecond of `moment` (an aware datetime),
    as the API writes ids: every id made before it sorts lower, on both
    engines (PostgreSQL compares uuids byte by byte; SQLite, the text)."""
    ms = int(moment.timestamp() * 1000)
    digits = f"{ms << 80 | 0x7 << 76 | 0b10 << 62:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def id_time_ms(value):
    """The millisecond a UUIDv7 (a uuid.UUID) was made at, or None for
    another version."""
    return value.int >> 80 if value.version == 7 else None
