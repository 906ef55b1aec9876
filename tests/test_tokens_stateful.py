"""Stateful property test of the token tree against a simple model.

Hypothesis grows a random forest of sources (roots, children, linked sources,
some with timeouts on a fake clock), cancels and closes them (in the caller or
in the background), moves time on and fires due deadlines, registers and
detaches callbacks, and drops sources that still have registrations; after
every step the real tokens must agree with the model.

The model: a node is cancelled iff it was cancelled or closed itself, or one of
its parents (ancestors, linked inputs) was, or a deadline of it or an ancestor
passed and was fired. Its reason is the reason of the first cause in time. A
node born under already cancelled parents takes the reason of the first
cancelled one in argument order (its causes all precede its birth).

A registered, undetached callback runs exactly once iff its node is cancelled,
whether or not its source was dropped: a live node with a pending callback is
held by its anchors, the nearest root or own-deadline node on each path up
(and an own-deadline node that holds one, or has a pending callback itself, is
kept by the timer). A dropped node's token may be collected otherwise; the
model is compared with the tokens that are still alive.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from lifecycle import DEADLINE_EXCEEDED, CancelSource, CancelToken, DeadlineTimer
from lifecycle._core import tokens as _tokens
from tests.fakes import FakeClock

JOIN = 10.0  # bound on the wait for background callbacks

# Binary fractions keep the fake clock's sums exact.
TIMEOUTS = st.sampled_from([None, None, 0, 0.5, 1, 2, 3.5, 8])
ADVANCES = st.sampled_from([0, 0.5, 1, 2, 4])
REASONS = st.sampled_from(["r1", "r2", "shutdown", "closed", DEADLINE_EXCEEDED])


@dataclass(eq=False)
class Node:
    """One source and what the model expects of its token."""

    source: CancelSource | None  # None once dropped
    ref: weakref.ref[CancelToken]
    parents: list[Node]
    deadline: float | None
    scheduled: bool  # its own deadline is earlier than every parent's
    cancelled: bool = False
    reason: str | None = None
    children: list[Node] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)

    def pending(self) -> bool:
        """A callback of it is registered and has neither run nor been detached."""
        return any(not c.detached and c.expected_calls == 0 for c in self.callbacks)

    def pinned(self) -> bool:
        """Held by its anchors: live, with a pending callback."""
        return not self.cancelled and self.pending()

    def holds(self) -> bool:
        """An anchor for the nodes below it: a root, or a node with its own deadline."""
        return not self.parents or self.scheduled

    def anchors(self) -> list[Node]:
        """The nearest anchor on each path up (each node once)."""
        found: list[Node] = []
        for parent in self.parents:
            for anchor in [parent] if parent.holds() else parent.anchors():
                if all(anchor is not f for f in found):
                    found.append(anchor)
        return found


@dataclass(eq=False)
class Callback:
    """A registered on_cancel callback, its call count and the model's view of it."""

    node: Node
    calls: list[int] = field(default_factory=list)
    detach: object = None
    detached: bool = False  # detached in time: must never run
    expected_calls: int = 0


class TokenForest(RuleBasedStateMachine):
    """Random forests of sources checked against the model after every step."""

    nodes = Bundle("nodes")
    callbacks = Bundle("callbacks")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.timer = DeadlineTimer(self.clock, threaded=False)
        self.all_nodes: list[Node] = []
        self.all_callbacks: list[Callback] = []

    # -- the model -------------------------------------------------------------

    def model_cancel(self, node: Node, reason: str) -> None:
        """Cancel ``node`` and every live descendant with ``reason`` (first cause wins)."""
        stack = [node]
        while stack:
            current = stack.pop()
            if current.cancelled:
                continue
            current.cancelled = True
            current.reason = reason
            for callback in current.callbacks:
                if not callback.detached:
                    callback.expected_calls = 1
            stack.extend(current.children)

    def add_node(self, source: CancelSource, parents: list[Node], timeout: float | None) -> Node:
        inherited = min((p.deadline for p in parents if p.deadline is not None), default=None)
        own = None if timeout is None else self.clock() + timeout
        scheduled = own is not None and (inherited is None or own < inherited)
        node = Node(
            source, weakref.ref(source.token), parents, own if scheduled else inherited, scheduled
        )
        self.all_nodes.append(node)
        cause = next((p for p in parents if p.cancelled), None)
        if cause is not None:
            self.model_cancel(node, cause.reason or "")
        else:
            for parent in parents:
                parent.children.append(node)
            if scheduled and timeout == 0:
                self.model_cancel(node, DEADLINE_EXCEEDED)
        return node

    # -- rules -----------------------------------------------------------------

    @initialize(target=nodes, timeout=TIMEOUTS)
    def first_root(self, timeout):
        source = CancelSource(timeout=timeout, timer=self.timer)
        return self.add_node(source, [], timeout)

    @rule(target=nodes, timeout=TIMEOUTS)
    def new_root(self, timeout):
        source = CancelSource(timeout=timeout, timer=self.timer)
        return self.add_node(source, [], timeout)

    @rule(target=nodes, parent=nodes, timeout=TIMEOUTS)
    def new_child(self, parent, timeout):
        if parent.source is None:
            return multiple()
        source = CancelSource(parent.source.token, timeout=timeout)
        return self.add_node(source, [parent], timeout)

    @rule(
        target=nodes,
        inputs=st.lists(nodes, min_size=1, max_size=3),
        timeout=TIMEOUTS,
    )
    def new_linked(self, inputs, timeout):
        if any(n.source is None for n in inputs):
            return multiple()
        source = CancelSource.linked(
            *(n.source.token for n in inputs), timeout=timeout, timer=self.timer
        )
        return self.add_node(source, list(inputs), timeout)

    @rule(node=nodes, reason=REASONS)
    def cancel(self, node, reason):
        if node.source is not None:
            node.source.cancel(reason)
            self.model_cancel(node, reason)

    @rule(node=nodes, reason=REASONS)
    def cancel_in_background(self, node, reason):
        if node.source is not None:
            _tokens.cancel_in_background(node.source, reason)
            self.model_cancel(node, reason)

    @rule(node=nodes)
    def close(self, node):
        if node.source is not None:
            node.source.close()
            self.model_cancel(node, "closed")

    @rule(node=nodes)
    def drop(self, node):
        """Forget the source: only its children, and its pins, may hold the token now.

        No ``gc.collect()`` (it would cost ~25 ms a step): nothing here holds a
        token in a reference cycle, so an unpinned token is freed at once; a
        missing pin shows as a callback that never runs, an extra one in the
        pin invariants below.
        """
        node.source = None

    @rule(seconds=ADVANCES)
    def advance_and_fire(self, seconds):
        now = self.clock.advance(seconds)
        self.timer.fire_due()
        # Same reason for every deadline, so the firing order does not matter.
        for node in self.all_nodes:
            if node.scheduled and node.deadline is not None and node.deadline <= now:
                self.model_cancel(node, DEADLINE_EXCEEDED)

    @rule(target=callbacks, node=nodes, inline=st.booleans())
    def register(self, node, inline):
        if node.source is None:
            return multiple()
        callback = Callback(node)
        token = node.source.token
        record = lambda: callback.calls.append(1)  # noqa: E731
        callback.detach = (
            _tokens.on_cancel_inline(token, record) if inline else token.on_cancel(record)
        )
        node.callbacks.append(callback)
        self.all_callbacks.append(callback)
        if node.cancelled:
            callback.expected_calls = 1
        return callback

    @rule(callback=callbacks)
    def detach(self, callback):
        expected = not callback.detached and callback.expected_calls == 0
        assert callable(callback.detach)
        actual = callback.detach()
        if expected:
            callback.detached = True
        assert expected == actual

    # -- invariants ------------------------------------------------------------

    def alive(self) -> list[tuple[Node, CancelToken]]:
        return [(n, t) for n in self.all_nodes if (t := n.ref()) is not None]

    @invariant()
    def tokens_match_model(self):
        for node, token in self.alive():
            assert (node.cancelled, node.reason) == (token.cancelled, token.reason)

    @invariant()
    def deadlines_match_model(self):
        for node, token in self.alive():
            remaining = token.remaining()
            assert node.deadline == token.deadline
            assert (remaining is None) == (node.deadline is None)
            assert remaining is None or remaining >= 0

    @invariant()
    def callbacks_ran_as_expected(self):
        assert _tokens.wait_callbacks_idle(JOIN)
        for callback in self.all_callbacks:
            assert callback.expected_calls == len(callback.calls)

    @invariant()
    def only_live_children_registered(self):
        for node, token in self.alive():
            registered = token._children
            actual = set() if registered is None else set(registered)
            expected = (
                set()
                if node.cancelled
                else {t for c in node.children if not c.cancelled and (t := c.ref()) is not None}
            )
            assert expected == actual

    def pinned_by(self, anchor: Node) -> set[CancelToken | None]:
        return {n.ref() for n in self.all_nodes if n.pinned() and anchor in n.anchors()}

    @invariant()
    def pinned_tokens_held_by_their_anchors(self):
        for node, token in self.alive():
            assert self.pinned_by(node) == set(token._pinned or ())

    @invariant()
    def timer_keeps_deadline_anchors_and_pinned_deadlines(self):
        expected = {
            n.ref()
            for n in self.all_nodes
            if n.scheduled and not n.cancelled and (n.pending() or self.pinned_by(n))
        }
        assert expected == set(self.timer._keep)


TokenForest.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_token_forest = TokenForest.TestCase
