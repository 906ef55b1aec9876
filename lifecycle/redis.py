"""`lifecycle.redis`: a Redis Streams consumer group as a `MessageSource`, and a Redis `Dedupe`.

`StreamSource` is one consumer of a consumer group, in the shape the generic
consumer drives (``fetch``, ``ack``, ``give_back``)::

    source = lifecycle.redis.StreamSource(client, "orders", "billing", consumer="pod-1")
    app.add(lifecycle.Consumer(source, handle, concurrency=8))

What it does, and why (each a way a Streams consumer loses or repeats work):

* **The group exists.** The first fetch runs ``XGROUP CREATE ... MKSTREAM``
  from ``create_from`` (``"0"``: entries already in the stream are
  delivered too); an existing group is left as it is. A group or stream
  deleted while running is created again.
* **Its own history first.** ``XREADGROUP ... >`` moves each entry into the
  reading consumer's pending list (PEL) until ``XACK``; a process that
  restarts under the same consumer name reads that history (ID ``0``,
  then onwards) before it takes anything new.
* **A dead consumer's work is recovered.** Every ``claim_every`` seconds a
  fetch runs ``XAUTOCLAIM`` with ``min_idle``: entries delivered to any
  consumer of the group and not acked for that long become this
  consumer's. Too small a ``min_idle`` takes entries from consumers that
  are merely slow, and the work is done twice: it must exceed the longest
  handler plus the time a fetched message waits for a free handler.
* **Poison is put aside.** Redis counts the deliveries of every pending
  entry. With ``max_deliveries``, an entry delivered more often than that
  (read from history or claimed) is copied to ``dead_letter`` and acked, in
  one server-side script, so it lands in the dead-letter stream exactly
  once even if two consumers race for it.
* **Given back means available now.** `StreamSource.give_back` keeps the
  entries pending but marks them idle for about 11 days (``XCLAIM ... IDLE
  ... JUSTID``, only for entries this consumer still owns, in one script):
  the next ``XAUTOCLAIM`` of any consumer takes them, whatever its
  ``min_idle``. A given-back entry still counts the delivery it had.
* **Fetch is prompt.** ``XREADGROUP BLOCK`` runs in slices of
  `BLOCK_SLICE` seconds up to ``block``; a cancelled token ends the fetch
  at the next slice (what was read is returned, never dropped: it is in
  this consumer's PEL, and the consumer gives it back).

`AsyncStreamSource` is the same over ``redis.asyncio``, for
`lifecycle.AsyncConsumer`: the decisions are shared, only the sending
differs. `RedisDedupe` remembers which messages took effect, in the same Redis; see
its docstring for why writing that mark in the effect's own ``MULTI/EXEC``
makes the effect exactly-once.

Needs redis-py (``pip install 'lifecycle[redis]'``); checked with redis-py
8.1 against redis-server 7.0 (``XAUTOCLAIM`` needs 6.2 or later). The
stream, its dead-letter stream and the dedupe keys of one consumer must be
in one hash slot on a cluster (give them one ``{tag}``): the scripts and
transactions touch them together.

Added in 0.3 (with `lifecycle.Consumer`).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

try:
    import redis as _redis
except ImportError as _error:  # pragma: no cover - exercised in a child process
    raise ImportError(
        f"lifecycle.redis needs redis-py, which is not importable ({_error}); "
        f"install it with: pip install 'lifecycle[redis]'"
    ) from _error

from ._core.log import get_logger
from ._workers.consumer import Message
from ._workers.dedupe import Claim

if TYPE_CHECKING:
    from ._core.tokens import CancelToken

__all__ = [
    "BLOCK_SLICE",
    "GIVE_BACK_CHUNK",
    "GIVE_BACK_IDLE",
    "AsyncStreamSource",
    "RedisDedupe",
    "SourceStats",
    "StreamSource",
]

_log = get_logger()

_Entry = tuple[str, Mapping[Any, Any]]
"""A stream entry as redis-py returns it: (id, fields)."""

_T = TypeVar("_T")
_Step = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
"""One command to send: (a client method or script, its args, its kwargs)."""
_Steps = Generator[_Step, Any, _T]
"""An operation as the commands it sends; each reply (or error) is sent back in."""


def _step(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> _Step:
    return fn, args, kwargs


class _Stepper(Generic[_T]):
    """Steps being run by a twin: the step to send now, and what the steps returned."""

    def __init__(self, steps: _Steps[_T]) -> None:
        self._steps = steps
        self._result: Any = None
        self.step: _Step | None = None  # None once the steps returned
        self._advance(None, None)

    def _advance(self, reply: Any, error: Exception | None) -> None:
        try:
            self.step = self._steps.send(reply) if error is None else self._steps.throw(error)
        except StopIteration as finished:
            self.step, self._result = None, finished.value

    def reply(self, value: Any) -> None:
        """The step returned ``value``: on to the next one."""
        self._advance(value, None)

    def fail(self, error: Exception) -> None:
        """The step raised ``error``: the steps handle it, or it propagates from here."""
        self._advance(None, error)

    @property
    def result(self) -> _T:
        return cast("_T", self._result)


def _call(step: _Step) -> Any:
    """Send one step (the sync twin)."""
    fn, args, kwargs = step
    if fn is _pause:
        time.sleep(*args)
        return None
    return fn(*args, **kwargs)


async def _call_async(step: _Step) -> Any:
    """Send one step (the async twin)."""
    fn, args, kwargs = step
    if fn is _pause:
        await asyncio.sleep(*args)
        return None
    return await fn(*args, **kwargs)


def _pause(seconds: float) -> None:
    """A step that waits: ``time.sleep`` in the sync twin, ``asyncio.sleep`` in the async one."""


BLOCK_SLICE: Final = 0.1
"""Seconds of one ``XREADGROUP BLOCK``: how late a fetch notices its token is cancelled."""
GIVE_BACK_CHUNK: Final = 500
"""Entry ids one give-back script marks, at most.

Redis runs a script alone, serving no other client meanwhile: measured on
redis-server 7.0, one script over 10,000 ids held it for 155 ms; in chunks
of 500, 20 scripts of 8 ms each (the whole give-back 0.2 s either way)."""
GIVE_BACK_IDLE: Final = 1_000_000.0
"""Seconds of idle time a given-back entry is marked with (about 11.6 days).

Any ``min_idle`` below it claims the entry at once. Not "infinite": Redis
turns an ``IDLE`` longer than the time since 1970 into zero (checked on 7.0:
``IDLE`` 10**12 ms gives that idle time, 10**13 ms gives 0).
"""

# KEYS[1] stream, KEYS[2] dead-letter stream; ARGV[1] group, ARGV[2] id, then field/value
# pairs. XACK first: it answers 1 for exactly one caller per entry, so only that caller copies
# it. The type check comes before it: a script that fails half-way is not rolled back, and an
# XADD failing after the XACK would lose the entry.
_DEAD_LETTER: Final = """
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE dead-letter key ' .. KEYS[2] .. ' holds a ' .. kind
        .. ', not a stream; delete it or pass another dead_letter')
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
return acked
"""

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] idle ms, ARGV[4..] ids.
# Only entries this consumer still owns: one another consumer claimed meanwhile stays its.
_GIVE_BACK: Final = """
local given = 0
for i = 4, #ARGV do
    local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
    if #entry == 1 and entry[1][2] == ARGV[2] then
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i],
                   'IDLE', ARGV[3], 'JUSTID')
        given = given + 1
    end
end
return given
"""

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer. Checked and deleted in one step:
# DELCONSUMER drops the consumer's pending entries unacked; the group never sees them again.
_DELETE_IF_IDLE: Final = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
    return -1
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _positive(owner: str, name: str, value: float, fix: str) -> float:
    """``value`` as a float, or a ValueError naming ``owner``'s ``name`` and the fix."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}: {name} must be a number of seconds, got {value!r}; {fix}")
    if math.isnan(value) or value <= 0 or math.isinf(value):
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}; {fix}")
    return float(value)


def _name(owner: str, what: str, value: object) -> str:
    """``value`` if it is a non-empty str, or a clear error naming ``owner``'s ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{owner}: {what} must be a non-empty string, got {value!r}; pass e.g. {what}='orders'"
        )
    return value


def _text(value: object) -> str:
    """A reply value as str, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


class SourceStats:
    """What a `StreamSource` did, counted since it was made (read it any time).

    Attributes:
        fetched: Messages returned by ``fetch`` (new, history and claimed).
        history: Of those, read back from this consumer's own pending list.
        claimed: Of those, taken from other consumers with ``XAUTOCLAIM``.
        acked: Entries ``XACK`` removed from the pending list.
        ack_missed: Entries ``ack`` was asked for that were no longer pending
            (acked already, e.g. after another consumer claimed them).
        given_back: Entries marked available to others by ``give_back``.
        dead_lettered: Entries moved to the dead-letter stream.

    Example:
        >>> from lifecycle.redis import SourceStats
        >>> stats = SourceStats()
        >>> stats.acked += 2
        >>> stats.as_dict()["acked"], stats.as_dict()["fetched"]
        (2, 0)
    """

    __slots__ = (
        "ack_missed",
        "acked",
        "claimed",
        "dead_lettered",
        "fetched",
        "given_back",
        "history",
    )

    def __init__(self) -> None:
        self.fetched = 0
        self.history = 0
        self.claimed = 0
        self.acked = 0
        self.ack_missed = 0
        self.given_back = 0
        self.dead_lettered = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {name: getattr(self, name) for name in sorted(self.__slots__)}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"SourceStats({fields})"


class _StreamBase:
    """What `StreamSource` and `AsyncStreamSource` share: options, state, and every decision.

    The twins differ only in how they send a command (a call or an
    ``await``); what to send and what a reply means is decided here.
    """

    _owner: str = "StreamSource"
    _async: bool = False

    @staticmethod
    def _is_async_client(client: object) -> bool:
        """True for a ``redis.asyncio`` client (its commands return coroutines)."""
        return inspect.iscoroutinefunction(getattr(client, "execute_command", None))

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        *,
        min_idle: float = 60.0,
        claim_every: float = 1.0,
        dead_letter: str | None = None,
        max_deliveries: int | None = None,
        block: float = 1.0,
        create_from: str = "0",
    ) -> None:
        owner = self._owner
        if client is None or not hasattr(client, "xreadgroup"):
            raise TypeError(
                f"{owner}: client must be a redis client, got {client!r}; "
                f"pass redis.Redis.from_url('redis://host:6379/0')"
            )
        if self._is_async_client(client) != self._async:
            wanted = "redis.asyncio.Redis" if self._async else "redis.Redis"
            twin = "StreamSource" if self._async else "AsyncStreamSource"
            raise TypeError(
                f"{owner}: client must be a {wanted} client, got {type(client).__name__}; "
                f"pass a {wanted} client, or use {twin} for this one"
            )
        self._client = client
        self.stream = _name(owner, "stream", stream)
        self.group = _name(owner, "group", group)
        self.consumer = _name(owner, "consumer", consumer)
        self.min_idle = _positive(owner, "min_idle", min_idle, "pass e.g. min_idle=60")
        if self.min_idle >= GIVE_BACK_IDLE:
            raise ValueError(
                f"{owner}: min_idle={min_idle!r} s would never claim given-back entries "
                f"(they are marked idle for {GIVE_BACK_IDLE:.0f} s); pass a smaller min_idle"
            )
        self.claim_every = _positive(owner, "claim_every", claim_every, "pass e.g. claim_every=1")
        self.block = _positive(owner, "block", block, "pass e.g. block=1")
        if max_deliveries is not None:
            if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int):
                raise TypeError(
                    f"{owner}: max_deliveries must be an int or None, got {max_deliveries!r}; "
                    f"pass e.g. max_deliveries=5"
                )
            if max_deliveries < 1:
                raise ValueError(
                    f"{owner}: max_deliveries must be >= 1, got {max_deliveries}; "
                    f"pass e.g. max_deliveries=5, or None to never dead-letter"
                )
            if dead_letter is None:
                raise ValueError(
                    f"{owner}: max_deliveries={max_deliveries} needs a dead-letter stream; "
                    f"pass dead_letter='{stream}:dead'"
                )
        if dead_letter is not None:
            _name(owner, "dead_letter", dead_letter)
            if dead_letter == stream:
                raise ValueError(
                    f"{owner}: dead_letter must differ from the stream {stream!r}; "
                    f"pass dead_letter='{stream}:dead'"
                )
        if create_from not in ("0", "$"):
            raise ValueError(
                f"{owner}: create_from must be '0' (whole stream) or '$' (new entries only), "
                f"got {create_from!r}"
            )
        self.dead_letter = dead_letter
        self.max_deliveries = max_deliveries
        self.create_from = create_from
        self.stats = SourceStats()
        self._lock = threading.Lock()
        # Invariant: _held holds the ids fetch returned and neither ack nor give_back took yet.
        self._held: set[str] = set()
        self._group_ready = False
        self._history_cursor: str | None = "0"  # None once the own history has been read
        self._claim_cursor = "0-0"
        self._next_claim = 0.0  # monotonic time of the next XAUTOCLAIM scan; 0: at once
        self._dead_letter_script = client.register_script(_DEAD_LETTER)
        self._give_back_script = client.register_script(_GIVE_BACK)
        self._delete_script = client.register_script(_DELETE_IF_IDLE)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    @property
    def held(self) -> int:
        """How many fetched messages are neither acked nor given back."""
        with self._lock:
            return len(self._held)

    # -- decisions (no I/O) ------------------------------------------------------------

    def _check_limit(self, limit: object) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"{self._owner}.fetch: limit must be an int >= 1, got {limit!r}")

    def _group_error(self, error: Exception) -> None:
        """After a NOGROUP reply: start over, history included; other errors propagate."""
        if "NOGROUP" not in str(error):
            raise error
        _log.warning(
            "redis consumer group missing; creating it again", stream=self.stream, group=self.group
        )
        self._group_ready = False
        self._history_cursor = "0"
        self._claim_cursor = "0-0"

    def _group_created(self, created: bool) -> None:
        if created:
            _log.info(
                "redis consumer group created",
                stream=self.stream,
                group=self.group,
                start=self.create_from,
            )
        self._group_ready = True

    def _history_reply(self, reply: Any) -> tuple[list[_Entry], list[str]]:
        """(entries to hand out, ids deleted from the stream) of one history read."""
        entries = [(_text(i), f) for i, f in (reply[0][1] if reply else [])]
        if not entries:
            self._history_cursor = None
            return [], []
        self._history_cursor = entries[-1][0]
        # An entry deleted from the stream (XDEL, trimming) comes back without fields:
        # there is nothing to handle, so it leaves the pending list.
        return [(i, f) for i, f in entries if f], [i for i, f in entries if not f]

    def _claim_due(self) -> bool:
        return time.monotonic() >= self._next_claim

    def _autoclaim_args(self) -> tuple[Any, ...]:
        """XAUTOCLAIM's positional arguments (the cursor and count go by keyword)."""
        return (self.stream, self.group, self.consumer, int(self.min_idle * 1000))

    def _autoclaim_reply(self, reply: Any) -> tuple[list[_Entry], list[str]]:
        """(entries to hand out, claimed ids deleted from the stream) of one XAUTOCLAIM."""
        cursor = _text(reply[0])
        self._claim_cursor = cursor
        if cursor in ("0-0", "0"):  # the scan wrapped: the next one after claim_every
            self._next_claim = time.monotonic() + self.claim_every
        # Redis 7 drops deleted entries from the pending list itself; 6.2 hands them
        # over without fields, and they must be acked here or stay pending for good.
        claimed = [(_text(i), f) for i, f in reply[1]]
        return [(i, f) for i, f in claimed if f], [i for i, f in claimed if not f]

    def _pending_args(self, ids: Sequence[str]) -> dict[str, Any]:
        with self._lock:
            bound = len(ids) + len(self._held)
        return {
            "name": self.stream,
            "groupname": self.group,
            "min": min(ids, key=_id_key),
            "max": max(ids, key=_id_key),
            "count": bound,
            "consumername": self.consumer,
        }

    @staticmethod
    def _pending_reply(rows: Any) -> dict[str, int]:
        return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}

    def _split(
        self, entries: Sequence[_Entry], deliveries: Mapping[str, int]
    ) -> tuple[list[Message], list[tuple[str, Mapping[Any, Any], int]]]:
        """(messages to hand out, entries past ``max_deliveries``); the messages become held."""
        found: list[Message] = []
        dead: list[tuple[str, Mapping[Any, Any], int]] = []
        for entry_id, fields in entries:
            count = deliveries.get(entry_id, 1)
            if self.max_deliveries is not None and count > self.max_deliveries:
                dead.append((entry_id, fields, count))
            else:
                found.append(Message(id=entry_id, body=dict(fields), deliveries=count))
        with self._lock:
            self._held.update(m.id for m in found)
            self.stats.fetched += len(found)
        return found, dead

    def _counted(self, found: list[Message], kind: str) -> list[Message]:
        with self._lock:
            setattr(self.stats, kind, getattr(self.stats, kind) + len(found))
        if found:
            what = "reads its pending history" if kind == "history" else "claimed idle entries"
            _log.info(
                f"redis consumer {what}",
                stream=self.stream,
                consumer=self.consumer,
                count=len(found),
                min_idle=self.min_idle,
            )
        return found

    def _dead_letter_call(self, entry_id: str, fields: Mapping[Any, Any], count: int) -> Any:
        assert self.dead_letter is not None
        meta = {
            "source_stream": self.stream,
            "source_id": entry_id,
            "source_group": self.group,
            "deliveries": str(count),
        }
        flat: list[Any] = []
        for key, value in [*fields.items(), *meta.items()]:
            flat.extend((key, value))
        return {"keys": [self.stream, self.dead_letter], "args": [self.group, entry_id, *flat]}

    def _dead_lettered(self, moved: Any, entry_id: str, count: int) -> None:
        if int(moved):
            with self._lock:
                self.stats.dead_lettered += 1
            _log.warning(
                "redis entry moved to the dead-letter stream",
                stream=self.stream,
                id=entry_id,
                deliveries=count,
                max_deliveries=self.max_deliveries,
                dead_letter=self.dead_letter,
            )

    def _acked(self, ids: Sequence[str], acked: Any) -> int:
        with self._lock:
            self._held.difference_update(ids)
            self.stats.acked += int(acked)
            self.stats.ack_missed += len(ids) - int(acked)
        return int(acked)

    def _give_back_call(self, ids: Sequence[str]) -> dict[str, Any]:
        return {
            "keys": [self.stream],
            "args": [self.group, self.consumer, int(GIVE_BACK_IDLE * 1000), *ids],
        }

    def _given_back(self, ids: Sequence[str], given: Any) -> int:
        with self._lock:
            self._held.difference_update(ids)
            self.stats.given_back += int(given)
        return int(given)

    def _delete_call(self) -> dict[str, Any]:
        return {"keys": [self.stream], "args": [self.group, self.consumer]}

    def _kept(self) -> bool:
        _log.warning(
            "redis consumer kept: it still has pending entries",
            stream=self.stream,
            group=self.group,
            consumer=self.consumer,
        )
        return False

    def _slice_ms(self, left: float) -> int:
        return max(1, int(min(left, BLOCK_SLICE) * 1000))

    # -- what each operation sends, as steps both twins run (no I/O here) ---------------
    #
    # A step is (callable, args, kwargs): the sync twin calls it, the async twin awaits
    # what it returns. The reply (or the exception) is sent back into the generator.

    def _ensure_group_steps(self) -> _Steps[None]:
        try:
            yield _step(
                self._client.xgroup_create,
                self.stream,
                self.group,
                id=self.create_from,
                mkstream=True,
            )
            self._group_created(True)
        except _redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
            self._group_created(False)

    def _delete_steps(self, timeout: float) -> _Steps[bool]:
        deadline = time.monotonic() + max(0.0, timeout)
        while int((yield _step(self._delete_script, **self._delete_call()))) <= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._kept()
            yield _step(_pause, min(0.05, left))
        return True

    def _fetch_steps(self, limit: int, token: CancelToken) -> _Steps[list[Message]]:
        try:
            return (yield from self._read_steps(limit, token))
        except _redis.ResponseError as error:
            self._group_error(error)
            return []

    def _read_steps(self, limit: int, token: CancelToken) -> _Steps[list[Message]]:
        if not self._group_ready:
            yield from self._ensure_group_steps()
        if self._history_cursor is not None:
            reply = yield _step(
                self._client.xreadgroup,
                self.group,
                self.consumer,
                {self.stream: self._history_cursor},
                count=limit,
            )
            entries, gone = self._history_reply(reply)
            found = yield from self._admit_steps(entries, gone, "history")
            if found or self._history_cursor is not None:
                return found
        if self._claim_due():
            reply = yield _step(
                self._client.xautoclaim,
                *self._autoclaim_args(),
                start_id=self._claim_cursor,
                count=limit,
            )
            entries, gone = self._autoclaim_reply(reply)
            found = yield from self._admit_steps(entries, gone, "claimed")
            if found:
                return found
        deadline = time.monotonic() + self.block
        while not token.cancelled:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            reply = yield _step(
                self._client.xreadgroup,
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=limit,
                block=self._slice_ms(left),
            )
            entries = reply[0][1] if reply else []
            if entries:
                # Returned even if the token was cancelled meanwhile: they are ours now.
                found, _ = self._split([(_text(i), f) for i, f in entries], {})
                return found
        return []

    def _admit_steps(
        self, entries: Sequence[_Entry], gone: Sequence[str], kind: str
    ) -> _Steps[list[Message]]:
        """Messages for redelivered ``entries``; those past ``max_deliveries`` dead-lettered.

        Invariant: when a step fails, the entries this read moved into this
        consumer's pending list are given back before the error propagates
        (best effort), never left there idle-less and unreturned.
        """
        if gone:
            yield _step(self._client.xack, self.stream, self.group, *gone)
        if not entries:
            return []
        ids = [i for i, _ in entries]
        try:
            rows = yield _step(self._client.xpending_range, **self._pending_args(ids))
            found, dead = self._split(entries, self._pending_reply(rows))
            for entry_id, fields, count in dead:
                yield from self._dead_letter_steps(entry_id, fields, count)
        except Exception:
            yield from self._recover_steps(ids)
            raise
        return self._counted(found, kind)

    def _recover_steps(self, ids: Sequence[str]) -> _Steps[None]:
        with self._lock:
            self._held.difference_update(ids)
        try:
            yield from self._give_back_steps(ids)
        except Exception:  # noqa: BLE001 - the fetch's own error is the one raised
            _log.warning(
                "redis entries read by a failed fetch could not be given back",
                stream=self.stream,
                consumer=self.consumer,
                count=len(ids),
                hint="they stay in this consumer's pending list until min_idle passes",
                exc_info=True,
            )

    def _dead_letter_steps(
        self, entry_id: str, fields: Mapping[Any, Any], count: int
    ) -> _Steps[None]:
        call = self._dead_letter_call(entry_id, fields, count)
        self._dead_lettered((yield _step(self._dead_letter_script, **call)), entry_id, count)

    def _ack_steps(self, messages: Sequence[Message]) -> _Steps[int]:
        ids = [m.id for m in messages]
        if not ids:
            return 0
        return self._acked(ids, (yield _step(self._client.xack, self.stream, self.group, *ids)))

    def _give_back_steps(self, ids: Sequence[str]) -> _Steps[int]:
        # In chunks: one script holds Redis for its whole run (10 000 ids: 155 ms).
        given = 0
        for start in range(0, len(ids), GIVE_BACK_CHUNK):
            chunk = ids[start : start + GIVE_BACK_CHUNK]
            answer = yield _step(self._give_back_script, **self._give_back_call(chunk))
            given += self._given_back(chunk, answer)
        return given


class StreamSource(_StreamBase):
    """One consumer of a Redis Streams consumer group, as a `lifecycle.MessageSource`.

    Args:
        client: A ``redis.Redis`` client (thread-safe: the consumer's fetcher
            and its handler threads share it). Its ``socket_timeout``, if
            set, must exceed `BLOCK_SLICE`.
        stream: The stream's key.
        group: The consumer group's name.
        consumer: This consumer's name within the group. A process that
            restarts under the same name reads its pending history first; a
            new name per process works too (others claim what a dead one held).
        min_idle: Seconds an entry must have gone unacked before
            ``XAUTOCLAIM`` takes it from another consumer. Longer than the
            slowest handler plus the wait for a free handler, or work is
            duplicated.
        claim_every: Seconds between ``XAUTOCLAIM`` scans (the first fetch
            scans at once; a scan that did not reach the end of the pending
            list continues at the next fetch).
        dead_letter: The stream that receives entries delivered more than
            ``max_deliveries`` times, with their fields plus ``source_stream``,
            ``source_id``, ``source_group`` and ``deliveries``.
        max_deliveries: Deliveries allowed per entry (needs ``dead_letter``).
            A given-back entry keeps its count, so leave room for restarts.
        block: Seconds a fetch waits for new entries at most.
        create_from: Where a group created by this source starts: ``"0"``
            (the stream's whole content) or ``"$"`` (only new entries).

    Example:
        >>> import redis
        >>> import lifecycle.redis
        >>> client = redis.Redis(port=1)  # connects at the first command only
        >>> source = lifecycle.redis.StreamSource(client, "orders", "billing", "pod-1",
        ...                                       min_idle=60, max_deliveries=5,
        ...                                       dead_letter="orders:dead")
        >>> source
        StreamSource(stream='orders', group='billing', consumer='pod-1')
        >>> lifecycle.redis.StreamSource(client, "orders", "billing", "pod-1", min_idle=0)
        Traceback (most recent call last):
        ...
        ValueError: StreamSource: min_idle must be a finite number > 0, got 0; ...
    """

    def _run(self, steps: _Steps[_T]) -> _T:
        """Run ``steps``, calling each (the sync edge)."""
        run = _Stepper(steps)
        while run.step is not None:
            try:
                reply = _call(run.step)
            except Exception as error:  # noqa: BLE001 - sent into the steps, which decide
                run.fail(error)
            else:
                run.reply(reply)
        return run.result

    def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists; fetch calls it first."""
        self._run(self._ensure_group_steps())

    def delete_consumer(self, *, timeout: float = 0.0) -> bool:
        """Remove this consumer from the group unless it has pending entries; True if it is gone.

        The check and the delete run as one script: a consumer that still has
        pending entries is never deleted (``XGROUP DELCONSUMER`` drops them
        from the pending list unacked, and the group never delivers them
        again). Call it after the consumer stopped; with ``timeout``, it
        retries for that many seconds while others claim what this consumer
        gave back.
        """
        return self._run(self._delete_steps(timeout))

    def fetch(self, limit: int, token: CancelToken) -> Sequence[Message]:
        """Up to ``limit`` messages: own history first, then claimed ones, then new ones.

        Blocks at most ``block`` seconds, in slices of `BLOCK_SLICE`; returns
        ``[]`` at the next slice once ``token`` is cancelled. A fetch that
        raises after it read entries (e.g. its dead-letter step) gives them
        back first.
        """
        self._check_limit(limit)
        if token.cancelled:
            return []
        return self._run(self._fetch_steps(limit, token))

    def _to_dead_letter(self, entry_id: str, fields: Mapping[Any, Any], count: int) -> None:
        self._run(self._dead_letter_steps(entry_id, fields, count))

    def ack(self, messages: Sequence[Message]) -> int:
        """``XACK`` the messages: they leave the group's pending list for good.

        Returns how many were still pending (and are acked now).
        """
        return self._run(self._ack_steps(messages))

    def give_back(self, messages: Sequence[Message]) -> int:
        """Make the messages claimable by any consumer's next ``XAUTOCLAIM`` at once.

        Only entries this consumer still owns are marked; one another
        consumer claimed meanwhile stays with it. Returns how many were
        marked. Runs in scripts of `GIVE_BACK_CHUNK` ids, so that Redis
        serves other clients between them.
        """
        return self._run(self._give_back_steps([m.id for m in messages]))


class AsyncStreamSource(_StreamBase):
    """`StreamSource` over ``redis.asyncio``, as a `lifecycle.AsyncMessageSource`.

    The same options and behaviour; every call is a coroutine, for
    `lifecycle.AsyncConsumer` on the runner's event loop. The commands each
    call sends are decided once for both (`StreamSource` calls them, this
    one awaits them). The arguments other than ``client`` (``stream``,
    ``group``, ``consumer``, ``min_idle``, ``claim_every``, ``dead_letter``,
    ``max_deliveries``, ``block``, ``create_from``) are as for `StreamSource`.

    Args:
        client: A ``redis.asyncio.Redis`` client, used from the consumer's
            loop only (the fetch task and the handler tasks share it). Its
            ``socket_timeout``, if set, must exceed `BLOCK_SLICE`.

    Example:
        >>> import redis.asyncio
        >>> import lifecycle.redis
        >>> lifecycle.redis.AsyncStreamSource(redis.asyncio.Redis(port=1), "orders", "billing",
        ...                                   "pod-1")
        AsyncStreamSource(stream='orders', group='billing', consumer='pod-1')
    """

    _owner = "AsyncStreamSource"
    _async = True

    async def _run(self, steps: _Steps[_T]) -> _T:
        """Run ``steps``, awaiting each (the asyncio edge)."""
        run = _Stepper(steps)
        while run.step is not None:
            try:
                reply = await _call_async(run.step)
            except Exception as error:  # noqa: BLE001 - sent into the steps, which decide
                run.fail(error)
            else:
                run.reply(reply)
        return run.result

    async def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists; fetch calls it first."""
        await self._run(self._ensure_group_steps())

    async def delete_consumer(self, *, timeout: float = 0.0) -> bool:
        """Remove this consumer unless it has pending entries (`StreamSource.delete_consumer`)."""
        return await self._run(self._delete_steps(timeout))

    async def fetch(self, limit: int, token: CancelToken) -> Sequence[Message]:
        """Up to ``limit`` messages; see `StreamSource.fetch`."""
        self._check_limit(limit)
        if token.cancelled:
            return []
        return await self._run(self._fetch_steps(limit, token))

    async def _to_dead_letter(self, entry_id: str, fields: Mapping[Any, Any], count: int) -> None:
        await self._run(self._dead_letter_steps(entry_id, fields, count))

    async def ack(self, messages: Sequence[Message]) -> int:
        """``XACK`` the messages; see `StreamSource.ack`."""
        return await self._run(self._ack_steps(messages))

    async def give_back(self, messages: Sequence[Message]) -> int:
        """Make the messages claimable at once; see `StreamSource.give_back`."""
        return await self._run(self._give_back_steps([m.id for m in messages]))


def _id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``"ms-seq"`` as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisDedupe:
    """Which messages took effect, kept in Redis: a `lifecycle.Dedupe` across consumers.

    Redis Streams deliver at least once: an entry handled by a consumer that
    died before its ``XACK`` is delivered again, to another consumer or to
    the same one after a restart. A handler that checks the done-mark before
    its effect and writes it after still repeats the effect when it dies
    between the two. Exactly-once needs the effect and the mark to commit
    together: `commit` queues the handler's Redis writes and the mark in one
    ``MULTI/EXEC``, under ``WATCH`` of the mark. Either both are applied or
    neither is; and when two consumers race with the same message (one slow
    past ``min_idle``, one that claimed it), the first ``EXEC`` wins and the
    other's aborts, because the watched mark changed. So the effect happens
    once however often the message is delivered, as long as the mark is
    remembered (``remember`` seconds) and the effect lives in the same
    Redis (the same hash slot on a cluster). An effect outside Redis (an
    HTTP call, another database) gets at-least-once with a small window
    from `done`; make it idempotent with the message id instead.

    With `lifecycle.Consumer`, `claim` answers ``Claim.DONE`` for messages
    whose mark exists (a redelivery of one that took effect is acked without
    running the handler) and `done` writes the mark for handlers that did
    not use `commit`. There is no lease, so it never answers ``Claim.BUSY``:
    the group's pending list already gives each entry one owner until
    ``min_idle`` passes, so `release` has nothing to forget. Its calls block
    on Redis, so it serves `lifecycle.Consumer` only; `lifecycle.AsyncConsumer`
    refuses it (its calls would stall the event loop while Redis is slow).

    Args:
        client: A ``redis.Redis`` client.
        name: What the marks are kept under (``lifecycle:done:<name>:<id>``):
            one name per stream and group.
        remember: Seconds a mark is kept; longer than an entry can stay pending.

    Example:
        >>> import redis
        >>> import lifecycle.redis
        >>> dedupe = lifecycle.redis.RedisDedupe(redis.Redis(port=1), "orders:billing")
        >>> dedupe.key(lifecycle.redis.Message(id="1700000000000-0", body={}))
        'lifecycle:done:orders:billing:1700000000000-0'
    """

    WATCH_ATTEMPTS: Final = 5
    """``commit`` retries an aborted transaction this many times (each re-checks the mark)."""

    def __init__(self, client: Any, name: str, *, remember: float = 7 * 86400.0) -> None:
        owner = "RedisDedupe"
        if client is None or not hasattr(client, "pipeline"):
            raise TypeError(
                f"{owner}: client must be a redis.Redis client, got {client!r}; "
                f"pass redis.Redis.from_url('redis://host:6379/0')"
            )
        self._client = client
        self.name = _name(owner, "name", name)
        self.remember = _positive(owner, "remember", remember, "pass e.g. remember=7 * 86400")

    def __repr__(self) -> str:
        return f"RedisDedupe(name={self.name!r}, remember={self.remember!r})"

    def key(self, message: Message) -> str:
        """The key of ``message``'s done-mark."""
        return f"lifecycle:done:{self.name}:{message.id}"

    def claim(self, message: Message) -> Claim:
        """``Claim.DONE`` if ``message`` took effect already (its mark exists), else HANDLE."""
        return Claim.DONE if self._client.exists(self.key(message)) else Claim.HANDLE

    def done(self, message: Message) -> None:
        """Write ``message``'s mark (idempotent; `commit` writes it with the effect)."""
        self._client.set(self.key(message), "1", ex=max(1, int(self.remember)))

    def release(self, message: Message) -> None:
        """Nothing to forget: the pending list, not a lease, owns an unfinished message."""

    def mark_done(self, pipeline: Any, message: Message) -> None:
        """Queue ``message``'s mark on ``pipeline`` (a ``MULTI`` the caller executes)."""
        pipeline.set(self.key(message), "1", ex=max(1, int(self.remember)))

    def commit(self, message: Message, effect: Callable[[Any], object]) -> bool:
        """Apply ``effect`` and the mark in one ``MULTI/EXEC``; False if it took effect before.

        ``effect(pipeline)`` queues Redis commands on the transaction (it may
        be called again if the transaction aborts; it must do nothing else).
        Returns True when this call applied it.
        """
        key = self.key(message)
        with self._client.pipeline(transaction=True) as pipe:
            for _attempt in range(self.WATCH_ATTEMPTS):
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        pipe.reset()
                        return False
                    pipe.multi()
                    effect(pipe)
                    self.mark_done(pipe, message)
                    pipe.execute()
                    return True
                except _redis.WatchError:
                    continue  # the mark changed: the next attempt sees it
        raise RuntimeError(
            f"RedisDedupe.commit: the mark {key!r} kept changing during "
            f"{self.WATCH_ATTEMPTS} transactions; is something else writing it?"
        )
