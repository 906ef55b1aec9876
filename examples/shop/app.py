"""The shop: an HTTP API, a database pool, Redis, a stream consumer, a mailer and a job.

``app`` is the `lifecycle.App` (``lifecycle check examples.shop.app:app``),
built from the environment (`examples.shop.settings`). Its components, in
start order::

    db        @app.resource: a sqlite3 pool (WAL), closed after everything that uses it
    redis     @app.resource: the Redis client, PINGed at start, closed at stop
    emailer   @app.worker: sends the mail that shipping puts in the outbox
    stats     @app.every: recounts the orders by status into the stats table
    shipper   lifecycle.Consumer over lifecycle.redis.StreamSource("orders"):
              ships each order once (status + shipment mark + mail, one transaction)
    handoff   its stop waits (bounded) until the orders this replica accepted
              are shipped, before the shipper stops
    api       FastAPI on lifecycle.uvicorn.Server: POST /orders, GET /orders/{id},
              GET /report?ms= (slow on purpose, to watch a drain)

On SIGTERM: ``/readyz`` turns 503, the adaptive drain serves until the
traffic stops (``SHOP_DRAIN_MIN`` to ``SHOP_DRAIN_MAX``), then the API stops
(requests in flight finish), the handoff waits for the stream's backlog, the
shipper stops (handlers finish and are acked), the mailer sends what is
queued, and the pool and the Redis client close last.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import FastAPI, Header, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

import lifecycle
import lifecycle.redis
import lifecycle.uvicorn

from . import db as shopdb
from .settings import Settings

log = logging.getLogger("shop")

STREAM = "orders"
GROUP = "shipping"
DEAD_LETTER = "orders:dead"
SHUTDOWN_TIMEOUT = 40.0
REPORT_MAX_MS = 5000
"""The slowest ``/report`` allowed: the API's stop_timeout (8 s) covers it."""


class OrderIn(BaseModel):
    """The body of ``POST /orders``."""

    item: str = Field(min_length=1, max_length=100)
    qty: int = Field(ge=1, le=1000)


@dataclass
class Shop:
    """The app and the handles a ``main`` needs after the run."""

    app: lifecycle.App
    settings: Settings
    source: lifecycle.redis.StreamSource
    shipper: lifecycle.Consumer


def _field(body: Mapping[Any, Any], name: str) -> str:
    value = body.get(name, body.get(name.encode()))
    if value is None:
        raise KeyError(f"stream entry has no {name!r} field: {dict(body)!r}")
    return value.decode() if isinstance(value, bytes) else str(value)


class ShipmentDedupe:
    """A `lifecycle.Dedupe` over the shipments table: a redelivery of a shipped order is acked.

    The mark is written by `db.ship` in the effect's own transaction, so
    `done` and `release` have nothing to do; `claim` only skips the handler
    early. Two deliveries racing both get HANDLE; the mark's primary key
    lets one of them ship.
    """

    def __init__(self, pool: Callable[[], shopdb.Pool]) -> None:
        self._pool = pool

    def claim(self, message: lifecycle.Message) -> lifecycle.Claim:
        """DONE when the order's shipment mark exists, else HANDLE."""
        with self._pool().connection() as conn:
            done = shopdb.is_shipped(conn, _field(message.body, "order"))
        return lifecycle.Claim.DONE if done else lifecycle.Claim.HANDLE

    def done(self, message: lifecycle.Message) -> None:
        """Nothing: the mark committed with the effect."""

    def release(self, message: lifecycle.Message) -> None:
        """Nothing: a failed handler rolled its transaction back, mark included."""


class Handoff:
    """Its stop waits until the stream's backlog is shipped, then lets the shipper stop.

    It stops after the API (which depends on it) and before the shipper (on
    which it depends): the orders this replica accepted in its last moments
    are shipped by this replica. What is still there a margin before its
    deadline stays in Redis for the next replica (logged, not an error).
    """

    def __init__(self, client: redis.Redis, consumer: str) -> None:
        self.client = client
        self.consumer = consumer

    def backlog(self) -> int:
        """Entries not yet delivered to the group, plus this consumer's unacked ones."""
        lag = 0
        for group in self.client.xinfo_groups(STREAM):
            if group["name"] == GROUP:
                lag = int(group.get("lag") or 0)
        mine = 0
        for consumer in self.client.xinfo_consumers(STREAM, GROUP):
            if consumer["name"] == self.consumer:
                mine = int(consumer["pending"])
        return lag + mine

    def stop(self, token: lifecycle.CancelToken) -> None:
        """Wait for ``backlog() == 0``, at most until a margin before the token's deadline."""
        began = time.monotonic()
        deadline = (token.deadline or began + 8.0) - 0.3
        try:
            left = first = self.backlog()
            while left and time.monotonic() < deadline and not token.wait(0.02):
                left = self.backlog()
        except redis.ResponseError:
            return  # no stream or group yet: nothing was accepted, nothing to wait for
        except redis.RedisError as error:
            log.warning("handoff: Redis does not answer (%s); the backlog stays there", error)
            return
        waited = time.monotonic() - began
        if left:
            log.warning("handoff: %d orders left in the stream for the next replica", left)
        elif first:
            log.info("handoff: shipped the last %d orders in %.2fs", first, waited)


def build(settings: Settings) -> Shop:
    """Declare the shop's components for ``settings``; nothing runs until `lifecycle.run`.

    Example:
        >>> shop = build(Settings(consumer="doc"))
        >>> shop.app.start_order()
        ['db', 'redis', 'emailer', 'stats', 'shipper', 'handoff', 'api']
    """
    app = lifecycle.App(
        "shop",
        drain_delay=lifecycle.Drain(
            min=settings.drain_min, max=settings.drain_max, quiet=settings.drain_quiet
        ),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        stop_timeout=2,
        start_timeout=10,
        health=(settings.host, settings.health_port),
    )
    # No connection yet: redis-py connects at the first command (the resource's PING).
    client = redis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
    )
    mail: queue.Queue[str] = queue.Queue()

    @app.resource(stop_timeout=2)
    def db() -> Iterator[shopdb.Pool]:
        pool = shopdb.Pool(settings.data_dir / "shop.db", size=settings.pool_size)
        pool.open()
        yield pool
        abandoned = pool.close(deadline=lifecycle.current_token().deadline)
        if abandoned:
            log.warning("db: %d connections still borrowed at the deadline, closed", abandoned)

    def pool() -> shopdb.Pool:
        value: shopdb.Pool = app.value(db)
        return value

    @app.resource(name="redis", stop_timeout=2)
    def redis_client() -> Iterator[redis.Redis]:
        client.ping()  # fails the start at once, naming the URL, if Redis is not there
        yield client
        client.close()

    @app.worker(depends_on=[db], stop_timeout=2)
    def emailer(token: lifecycle.CancelToken) -> None:
        with pool().connection() as conn:
            for order_id in shopdb.unsent_mail(conn):  # what a previous run left
                mail.put(order_id)
        while not token.cancelled:
            try:
                order_id = mail.get(timeout=0.1)
            except queue.Empty:
                continue
            send_mail(order_id)
        # Stopping: the shipper stopped before us, so the queue only shrinks.
        # Send what is queued within a second; the rest stays in the outbox.
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            try:
                send_mail(mail.get_nowait())
            except queue.Empty:
                return

    def send_mail(order_id: str) -> None:
        # A real mailer talks SMTP here; the shop records that the mail went out.
        with pool().connection() as conn:
            shopdb.mark_sent(conn, order_id)

    @app.every(settings.stats_every, depends_on=[db], stop_timeout=2)
    def stats(token: lifecycle.CancelToken) -> None:
        with pool().connection() as conn:
            shopdb.refresh_stats(conn)

    def ship_order(message: lifecycle.Message) -> None:
        order_id = _field(message.body, "order")
        if settings.ship_ms:  # the carrier's API; the message's token says when to hurry
            lifecycle.current_token().wait(settings.ship_ms / 1000)
        with pool().connection() as conn:
            shipped = shopdb.ship(conn, order_id, message.id, settings.consumer)
        if shipped:
            mail.put(order_id)

    source = lifecycle.redis.StreamSource(
        client,
        STREAM,
        GROUP,
        consumer=settings.consumer,
        min_idle=30,  # > the slowest handler (milliseconds) by far
        claim_every=0.5,
        dead_letter=DEAD_LETTER,
        max_deliveries=10,
    )
    shipper = app.add(
        lifecycle.Consumer(source, ship_order, concurrency=4, dedupe=ShipmentDedupe(pool)),
        name="shipper",
        depends_on=[db, redis_client, emailer],
        stop_timeout=3,
    )
    handoff = app.add(
        Handoff(client, settings.consumer),
        name="handoff",
        depends_on=[redis_client, shipper],
        stop_timeout=8,
    )
    server = lifecycle.uvicorn.Server(
        _api(pool, client), host=settings.host, port=settings.port, access_log=False
    )
    app.add(server, name="api", depends_on=[db, redis_client, handoff], stop_timeout=8)
    return Shop(app=app, settings=settings, source=source, shipper=shipper)


def _api(pool: Callable[[], shopdb.Pool], client: redis.Redis) -> FastAPI:
    """The FastAPI app. Plain ``def`` endpoints run in a thread: sqlite3 and redis-py block."""
    api = FastAPI(title="shop")

    @api.post("/orders", status_code=201)
    def create_order(
        order: OrderIn,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any]:
        try:
            with pool().connection() as conn:
                row, created = shopdb.create_order(
                    conn, order.item, order.qty, idem_key=idempotency_key
                )
        except (
            shopdb.PoolExhaustedError,
            shopdb.PoolClosedError,
            sqlite3.OperationalError,
        ) as error:
            raise HTTPException(503, f"database busy: {error}") from error
        if not created:
            response.status_code = 200  # a retry of an order we hold: the same answer
            return row
        try:
            client.xadd(STREAM, {"order": row["id"]})
        except redis.RedisError as error:
            with pool().connection() as conn:
                shopdb.mark_failed(conn, row["id"])
            raise HTTPException(503, f"could not queue the order for shipping: {error}") from error
        return row

    @api.get("/orders/{order_id}")
    def get_order(order_id: str) -> dict[str, Any]:
        with pool().connection() as conn:
            row = shopdb.get_order(conn, order_id)
        if row is None:
            raise HTTPException(404, f"no order {order_id!r}")
        return row

    @api.get("/report")
    async def report(ms: Annotated[int, Query(ge=0, le=REPORT_MAX_MS)] = 100) -> dict[str, Any]:
        await asyncio.sleep(ms / 1000)  # a slow report: in flight at SIGTERM, it still finishes

        def read() -> dict[str, Any]:
            with pool().connection() as conn:
                return shopdb.read_stats(conn)

        return {"ms": ms, **await run_in_threadpool(read)}

    return api


settings = Settings.from_env()
shop = build(settings)
app = shop.app
