"""A child for tests/test_redis.py: fetch messages with a `StreamSource`, then hold them.

Usage::

    python -m tests.procs.redis_hold URL STREAM GROUP CONSUMER COUNT

Fetches until it holds COUNT messages (bounded: 10 s), prints their ids as
one JSON line, and then never acks them: it waits (at most 60 s) for the
parent to SIGKILL it, as a consumer that dies mid-work.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import redis

from lifecycle import CancelSource
from lifecycle.redis import StreamSource

HOLD_BOUND = 60.0
FETCH_BOUND = 10.0


def main() -> int:
    url, stream, group, consumer, count = sys.argv[1:6]
    client = redis.Redis.from_url(url, decode_responses=True)
    source = StreamSource(client, stream, group, consumer, block=0.2)
    held: list[str] = []
    token = CancelSource().token
    deadline = time.monotonic() + FETCH_BOUND
    while len(held) < int(count) and time.monotonic() < deadline:
        held += [m.id for m in source.fetch(int(count) - len(held), token)]
    print(json.dumps({"held": held}), flush=True)
    threading.Event().wait(HOLD_BOUND)
    return 1


if __name__ == "__main__":
    sys.exit(main())
