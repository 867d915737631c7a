"""Helpers shared by the Kafka client scripts that tests/kafka_clients.rs runs.

Every script prints exactly one JSON line with its results on stdout and
writes details of anything that went wrong to stderr. It exits 0 when it
did what it was asked (the Rust test then judges the numbers), 1 when it
could not (a timeout, a client error), and 2 on bad arguments.
"""

import json
import sys
import time


def emit(result):
    """Prints the one JSON result line."""
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def log(*parts, sep=" "):
    print(*parts, sep=sep, file=sys.stderr, flush=True)


def finish(result, ok):
    """Prints the result and exits 0 when `ok`, else 1."""
    result["ok"] = bool(ok)
    emit(result)
    sys.exit(0 if ok else 1)


def value_id(value, prefix):
    """The integer id of a value `PREFIX<id>`, or None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not value.startswith(prefix):
        return None
    try:
        return int(value[len(prefix):])
    except ValueError:
        return None


def first(items, n=10):
    return sorted(items)[:n]


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def passed(self):
        return time.monotonic() >= self.end


def add_debug(config, debug):
    """librdkafka protocol debugging (`--debug protocol,broker,msg`)."""
    if debug:
        config["debug"] = debug
    return config
