"""A target module that tests/procs/procgroup_parent.py imports only inside ``main``.

So the spawned child imports it first when it unpickles the target: what
``IMPORT_PDEATHSIG`` records is the parent-death signal the child held then.
"""

from __future__ import annotations

import sys

from lifecycle import App
from tests.procs.procgroup_child import make_app as _make_app
from tests.procs.procgroup_child import parent_death_signal

IMPORT_PDEATHSIG = parent_death_signal()  # at this module's import, in the child


def make_app(behaviour: str, marker: str) -> App:
    """`procgroup_child.make_app`, after logging ``what="import"``: ``pdeathsig`` (this
    module's ``IMPORT_PDEATHSIG``) and ``main_pdeathsig`` (the parent main module's)."""
    import os  # noqa: PLC0415

    from tests.procs import log_json_lines  # noqa: PLC0415

    main = sys.modules.get("__mp_main__")
    log_json_lines().info(
        "child",
        what="import",
        pid=os.getpid(),
        pdeathsig=IMPORT_PDEATHSIG,
        main_pdeathsig=getattr(main, "IMPORT_PDEATHSIG", None),
    )
    return _make_app(behaviour, marker)
