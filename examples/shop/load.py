"""A bounded HTTP load on keep-alive connections, counting what was answered, refused, lost.

Each client thread keeps one HTTP/1.1 connection open and sends requests on
it, mixing ``POST /orders``, ``GET /orders/{id}`` and a slow ``GET
/report``; it reconnects when a response says ``Connection: close``. A
request is

- *answered* when a whole response came back (any status);
- *refused* when the connection it needed was refused at connect: it was
  never sent (a load balancer routes it to another replica), and the client
  stops, since the server is gone;
- *lost* when it was sent and no response came (a reset, a close, a
  timeout): the loss a graceful shutdown must avoid.

The load is bounded in count (``total``) and in time (``seconds``), and only
ever talks to 127.0.0.1.

Example::

    load = Load(port=8000, clients=8, total=400, seconds=20)
    load.start()
    load.join()
    print(load.result())
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Result:
    """What a `Load` counted."""

    sent: int = 0
    answered: int = 0
    refused: int = 0
    lost: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    accepted: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a person: sent, answered (by status), refused, lost."""
        by_status = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (
            f"requests sent {self.sent}, answered {self.answered} ({by_status}), "
            f"refused at connect {self.refused}, lost {self.lost}"
        )


class Load:
    """``clients`` threads sending at most ``total`` requests within ``seconds`` to 127.0.0.1."""

    def __init__(
        self,
        port: int,
        *,
        clients: int = 8,
        total: int = 400,
        seconds: float = 20.0,
        report_ms: tuple[int, int] = (20, 200),
        timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.clients = clients
        self.total = total
        self.seconds = seconds
        self.report_ms = report_ms
        self.timeout = timeout
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self._result = Result()
        self._answered = threading.Condition(self._lock)
        self._threads = [
            threading.Thread(target=self._client, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(clients)
        ]
        self._until = 0.0

    def start(self) -> None:
        """Start the client threads."""
        self._until = time.monotonic() + self.seconds
        for thread in self._threads:
            thread.start()

    def wait_answered(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` requests were answered (False after ``timeout`` seconds)."""
        with self._answered:
            return self._answered.wait_for(lambda: self._result.answered >= count, timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the clients to end (bounded by ``seconds`` plus a request's timeout)."""
        bound = self.seconds + self.timeout + 5 if timeout is None else timeout
        until = time.monotonic() + bound
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def result(self) -> Result:
        """A copy of the counts so far."""
        with self._lock:
            r = self._result
            return Result(
                r.sent,
                r.answered,
                r.refused,
                r.lost,
                Counter(r.statuses),
                set(r.accepted),
                list(r.errors),
            )

    def _next(self) -> bool:
        return next(self._tickets) < self.total and time.monotonic() < self._until

    def _request(self, n: int, last: str | None) -> tuple[str, str, bytes | None, dict[str, str]]:
        pick = random.random()
        if pick < 0.5 or last is None:
            body = json.dumps({"item": f"book-{n}", "qty": 1 + int(pick * 10)}).encode()
            headers = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
            return "POST", "/orders", body, headers
        if pick < 0.8:
            return "GET", f"/orders/{last}", None, {}
        low, high = self.report_ms
        return "GET", f"/report?ms={random.randint(low, high)}", None, {}

    def _client(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        last: str | None = None
        try:
            while self._next():
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                    try:
                        conn.connect()
                    except ConnectionRefusedError:
                        with self._lock:
                            self._result.refused += 1
                        return  # the server is gone: a balancer would send it elsewhere
                method, path, body, headers = self._request(n, last)
                with self._lock:
                    self._result.sent += 1
                try:
                    conn.request(method, path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as error:
                    with self._lock:
                        self._result.lost += 1
                        self._result.errors.append(f"{method} {path}: {error!r}")
                    conn.close()
                    conn = None
                    continue
                if response.status == 201:
                    last = json.loads(data)["id"]
                with self._answered:
                    self._result.answered += 1
                    self._result.statuses[response.status] += 1
                    if response.status == 201 and last is not None:
                        self._result.accepted.add(last)
                    self._answered.notify_all()
                if response.will_close:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
