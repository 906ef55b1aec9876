"""The dependency graph: validation, order, layers, critical path. Pure and O(V+E).

Nothing here knows about components, threads or time: names in, names out.
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import attrs

from .errors import CycleError, UnknownDependency

__all__ = ["Graph", "analyze", "critical_path"]


@attrs.frozen
class Graph:
    """A validated dependency graph.

    Attributes:
        order: every name, each after all of its dependencies. Deterministic:
            the roots in registration order, then each name in the order it
            became ready (breadth-first), so the same declaration always
            gives the same order.
        layers: the start waves: layer 0 depends on nothing, layer k on
            something in layer k-1 at the deepest. Names in one layer are
            independent of each other and start concurrently.
        depends_on: name -> its dependencies (deduplicated, declaration order).
        dependents: name -> the names that depend on it (registration order).
    """

    order: tuple[str, ...]
    layers: tuple[tuple[str, ...], ...]
    depends_on: Mapping[str, tuple[str, ...]]
    dependents: Mapping[str, tuple[str, ...]]


def analyze(declared: Mapping[str, Sequence[str]]) -> Graph:
    """Validate ``declared`` (name -> dependency names, in registration order).

    Raises:
        UnknownDependency: a name depends on something not in ``declared``
            (the first such, in registration order), with the closest name.
        CycleError: the dependencies loop; ``.cycle`` lists the loop.
    """
    names = list(declared)
    deps: dict[str, tuple[str, ...]] = {}
    for name in names:
        unique = tuple(dict.fromkeys(declared[name]))
        for dep in unique:
            if dep not in declared:
                close = difflib.get_close_matches(dep, names, n=1, cutoff=0.6)
                raise UnknownDependency(name, dep, names, close[0] if close else None)
        deps[name] = unique
    dependents: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        for dep in deps[name]:
            dependents[dep].append(name)

    # Kahn's algorithm; the queue is fed in registration order so that the
    # result is stable. depth[n] = 1 + max depth of its dependencies.
    missing = {name: len(deps[name]) for name in names}
    depth = dict.fromkeys(names, 0)
    ready = deque(name for name in names if missing[name] == 0)
    order: list[str] = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for user in dependents[name]:
            depth[user] = max(depth[user], depth[name] + 1)
            missing[user] -= 1
            if missing[user] == 0:
                ready.append(user)
    if len(order) < len(names):
        raise CycleError(_find_cycle(names, deps, missing))

    layers: list[list[str]] = []
    for name in order:
        d = depth[name]
        while len(layers) <= d:
            layers.append([])
        layers[d].append(name)
    return Graph(
        order=tuple(order),
        layers=tuple(tuple(layer) for layer in layers),
        depends_on=deps,
        dependents={name: tuple(users) for name, users in dependents.items()},
    )


def _find_cycle(
    names: list[str], deps: Mapping[str, tuple[str, ...]], missing: Mapping[str, int]
) -> list[str]:
    """Return one loop among the names Kahn's algorithm could not order.

    Every such name has at least one dependency that is also unordered, so
    walking from one to an unordered dependency must revisit a name.
    """
    stuck = {name for name in names if missing[name] > 0}
    rank = {name: i for i, name in enumerate(names)}
    start = next(name for name in names if name in stuck)
    seen: dict[str, int] = {}
    path: list[str] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(dep for dep in deps[node] if dep in stuck)
    loop = path[seen[node] :]
    # Start the drawing at the earliest-registered member, for a stable message.
    first = min(range(len(loop)), key=lambda i: rank[loop[i]])
    loop = loop[first:] + loop[:first]
    return [*loop, loop[0]]


def critical_path(
    graph: Graph, weight: Callable[[str], float]
) -> tuple[float, tuple[str, ...]]:
    """The longest chain of ``weight`` along which a shutdown must stop things.

    A component's stop begins only after every dependent's stop has finished,
    so the worst-case shutdown takes the heaviest chain from a component
    nobody depends on down to a root. Returns the total and that chain in
    stop order (first stopped first).
    """
    finish: dict[str, float] = {}
    after: dict[str, str | None] = {}
    # Walk in start order reversed: dependents are finished before their dependencies.
    for name in reversed(graph.order):
        users = graph.dependents[name]
        latest = max(users, key=lambda u: finish[u], default=None)
        finish[name] = weight(name) + (finish[latest] if latest is not None else 0.0)
        after[name] = latest
    if not finish:
        return 0.0, ()
    # The chain ends at the root with the largest finish time.
    root = max(graph.order, key=lambda n: finish[n])
    total = finish[root]
    chain: list[str] = []
    end: str | None = root
    while end is not None:
        chain.append(end)
        end = after[end]
    chain.reverse()
    return total, tuple(chain)
