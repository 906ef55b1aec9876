"""A parent process for tests/test_processes.py: an App whose one component is a ProcessGroup.

Usage::

    python -m tests.procs.procgroup_parent CONFIG_JSON

CONFIG_JSON holds ``processes``, ``behaviour`` (see `procgroup_child`),
``marker`` (a path), ``restart`` (a mode, or a dict of `RestartPolicy`
fields), ``stop_timeout``, ``start_timeout``, ``parent_death_signal``, ``kill_after``,
``late_target`` (the target from `procgroup_late`) and ``busy`` (a worker that
keeps a thread computing, holding the GIL, while the app runs).

Everything goes to stdout as JSON lines: the library's events (``process
started`` with ``component`` ``workers[i]`` and ``pid``), the children's
(`procgroup_child`), and at the end ``{"event": "result", "code": ...,
"state": ..., "children": [...]}``.
"""

from __future__ import annotations

import json
import sys

import attrs

import lifecycle
from lifecycle import App, CancelToken
from lifecycle._core.restart import RestartPolicy
from lifecycle._runtime.processes import ProcessGroup
from tests.procs import log_json_lines
from tests.procs.procgroup_child import make_app, parent_death_signal

# Imported again in each child (as __mp_main__): the parent-death signal it holds then.
IMPORT_PDEATHSIG = parent_death_signal() if __name__ == "__mp_main__" else None


def main() -> int:
    config = json.loads(sys.argv[1])
    log = log_json_lines()
    restart = config.get("restart", "on-failure")
    if isinstance(restart, dict):
        restart = RestartPolicy(**restart)
    target = make_app
    if config.get("late_target"):  # imported here only: the children import it on their own
        from tests.procs.procgroup_late import make_app as target  # noqa: PLC0415
    group = ProcessGroup(
        target,
        processes=config.get("processes", 2),
        args=(config.get("behaviour", "normal"), config.get("marker", "")),
        restart=restart,
        name="workers",
        parent_death_signal=config.get("parent_death_signal", True),
        kill_after=config.get("kill_after"),
    )
    app = App("parent", shutdown_timeout=30)
    app.add(
        group,
        name="workers",
        stop_timeout=config.get("stop_timeout", 5),
        start_timeout=config.get("start_timeout"),
    )
    if config.get("busy"):

        @app.worker
        def busy(token: CancelToken) -> None:
            n = 0
            while not token.cancelled:  # pure computation: holds the GIL between checks
                n = (n * 31 + 7) % 1000003

    code = lifecycle.run(app)
    log.info(
        "result",
        code=code,
        state=app.components["workers"].state.name,
        children=[attrs.asdict(c) for c in group.children],
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
