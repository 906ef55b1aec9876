"""A small connection pool over sqlite3 (stdlib), and the shop's queries.

`Pool` opens ``size`` connections to one database file in WAL mode (readers
never wait for the writer; writers queue on ``busy_timeout``) and lends them
out one thread at a time. `Pool.close` stops lending, closes the idle
connections and waits, up to a deadline, for the borrowed ones to come back.

Example:
    >>> import tempfile, pathlib
    >>> pool = Pool(pathlib.Path(tempfile.mkdtemp()) / "shop.db", size=2)
    >>> pool.open()
    >>> with pool.connection() as conn:
    ...     order, created = create_order(conn, "book", 1, idem_key=None)
    >>> order["status"], created
    ('accepted', True)
    >>> pool.close()
    0
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    item TEXT NOT NULL,
    qty INTEGER NOT NULL,
    status TEXT NOT NULL,            -- accepted, shipped, failed
    idem_key TEXT UNIQUE,            -- the client's Idempotency-Key header
    created_at REAL NOT NULL,
    shipped_at REAL
);
-- One row per shipped order: the mark that makes shipping exactly-once. It
-- commits in the same transaction as the order's new status.
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY REFERENCES orders(id),
    message_id TEXT NOT NULL,        -- the stream entry that shipped it
    consumer TEXT NOT NULL,
    at REAL NOT NULL
);
-- Mail to send, written with the shipment; the emailer marks it sent.
CREATE TABLE IF NOT EXISTS outbox (
    order_id TEXT PRIMARY KEY REFERENCES orders(id),
    created_at REAL NOT NULL,
    sent_at REAL
);
CREATE TABLE IF NOT EXISTS stats (
    status TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    at REAL NOT NULL
);
"""


class PoolClosedError(RuntimeError):
    """The pool is closed (the app is stopping): no connection is lent any more."""


class PoolExhaustedError(RuntimeError):
    """Every connection stayed borrowed for the whole wait."""


class Pool:
    """``size`` sqlite3 connections to ``path``, lent one thread at a time.

    Args:
        path: the database file (its folder is created).
        size: how many connections.
        wait: seconds `connection` waits for a free one before `PoolExhaustedError`.
        busy_timeout: seconds a write waits for sqlite's lock.
    """

    def __init__(
        self, path: Path, *, size: int = 4, wait: float = 5.0, busy_timeout: float = 5.0
    ) -> None:
        if size < 1:
            raise ValueError(f"Pool size must be at least 1, got {size}")
        self.path = path
        self.size = size
        self.wait = wait
        self.busy_timeout = busy_timeout
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Condition()
        self._borrowed = 0
        self._closed = True

    def open(self) -> None:
        """Open the connections, switch the file to WAL, and create the tables."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(self.size):
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE
                check_same_thread=False,  # lent to one thread at a time, by the pool
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._all.append(conn)
            self._idle.put(conn)
        with self._lock:
            self._closed = False
        with self.connection() as conn:
            conn.executescript(SCHEMA)

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection for the ``with`` block; an open transaction is rolled back."""
        with self._lock:
            if self._closed:
                raise PoolClosedError(f"the pool of {self.path} is closed")
        try:
            conn = self._idle.get(timeout=self.wait)
        except queue.Empty:
            raise PoolExhaustedError(
                f"no free connection to {self.path} within {self.wait}s "
                f"(all {self.size} borrowed); raise SHOP_POOL_SIZE"
            ) from None
        with self._lock:
            self._borrowed += 1
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._lock:
                self._borrowed -= 1
                self._idle.put(conn)
                self._lock.notify_all()

    def close(self, deadline: float | None = None) -> int:
        """Close every connection; wait until ``deadline`` (monotonic) for borrowed ones.

        Returns how many were still borrowed at the deadline (closed anyway).
        """
        with self._lock:
            self._closed = True
            while self._borrowed and (deadline is None or time.monotonic() < deadline):
                self._lock.wait(None if deadline is None else deadline - time.monotonic())
            abandoned = self._borrowed
        for conn in self._all:
            conn.close()
        self._all.clear()
        while not self._idle.empty():
            self._idle.get_nowait()
        return abandoned


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _order(row: sqlite3.Row | None) -> dict[str, Any] | None:
    return None if row is None else dict(row)


def create_order(
    conn: sqlite3.Connection, item: str, qty: int, *, idem_key: str | None
) -> tuple[dict[str, Any], bool]:
    """Insert an accepted order; with ``idem_key`` seen before, return that one (False)."""
    with transaction(conn):
        if idem_key is not None:
            found = conn.execute("SELECT * FROM orders WHERE idem_key = ?", (idem_key,)).fetchone()
            if found is not None:
                return dict(found), False
        order_id = uuid.uuid4().hex
        conn.execute(
            "INSERT INTO orders (id, item, qty, status, idem_key, created_at) "
            "VALUES (?, ?, ?, 'accepted', ?, ?)",
            (order_id, item, qty, idem_key, time.time()),
        )
        row = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    return dict(row), True


def get_order(conn: sqlite3.Connection, order_id: str) -> dict[str, Any] | None:
    """The order's row as a dict, or None."""
    return _order(conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone())


def mark_failed(conn: sqlite3.Connection, order_id: str) -> None:
    """The order could not be queued for shipping."""
    with transaction(conn):
        conn.execute(
            "UPDATE orders SET status = 'failed' WHERE id = ? AND status = 'accepted'", (order_id,)
        )


def is_shipped(conn: sqlite3.Connection, order_id: str) -> bool:
    """True when the order's shipment mark exists."""
    found = conn.execute("SELECT 1 FROM shipments WHERE order_id = ?", (order_id,)).fetchone()
    return found is not None


class UnknownOrderError(LookupError):
    """A stream entry names an order the database does not hold."""


def ship(conn: sqlite3.Connection, order_id: str, message_id: str, consumer: str) -> bool:
    """Ship the order once: its status, its shipment mark and its mail, in one transaction.

    Returns False when it was shipped already (the mark exists): nothing changes.
    """
    with transaction(conn):
        if conn.execute("SELECT 1 FROM orders WHERE id = ?", (order_id,)).fetchone() is None:
            raise UnknownOrderError(
                f"order {order_id!r} (stream entry {message_id}) is not in the DB"
            )
        marked = conn.execute(
            "INSERT OR IGNORE INTO shipments (order_id, message_id, consumer, at) "
            "VALUES (?, ?, ?, ?)",
            (order_id, message_id, consumer, time.time()),
        )
        if marked.rowcount == 0:
            return False
        now = time.time()
        conn.execute(
            "UPDATE orders SET status = 'shipped', shipped_at = ? WHERE id = ?", (now, order_id)
        )
        conn.execute("INSERT INTO outbox (order_id, created_at) VALUES (?, ?)", (order_id, now))
    return True


def unsent_mail(conn: sqlite3.Connection, limit: int = 100) -> list[str]:
    """Order ids whose mail is not sent yet, oldest first."""
    rows = conn.execute(
        "SELECT order_id FROM outbox WHERE sent_at IS NULL ORDER BY created_at LIMIT ?", (limit,)
    ).fetchall()
    return [row[0] for row in rows]


def mark_sent(conn: sqlite3.Connection, order_id: str) -> None:
    """The order's mail went out."""
    with transaction(conn):
        conn.execute(
            "UPDATE outbox SET sent_at = ? WHERE order_id = ? AND sent_at IS NULL",
            (time.time(), order_id),
        )


def refresh_stats(conn: sqlite3.Connection) -> dict[str, int]:
    """Recount the orders by status into ``stats``; return the counts."""
    with transaction(conn):
        rows = conn.execute("SELECT status, COUNT(*) FROM orders GROUP BY status").fetchall()
        counts = {row[0]: int(row[1]) for row in rows}
        conn.execute("DELETE FROM stats")
        now = time.time()
        conn.executemany(
            "INSERT INTO stats (status, count, at) VALUES (?, ?, ?)",
            [(status, count, now) for status, count in counts.items()],
        )
    return counts


def read_stats(conn: sqlite3.Connection) -> dict[str, Any]:
    """The last refreshed counts and when they were taken (None before the first run)."""
    rows = conn.execute("SELECT status, count, at FROM stats").fetchall()
    return {
        "counts": {row[0]: row[1] for row in rows},
        "at": max((row[2] for row in rows), default=None),
    }
