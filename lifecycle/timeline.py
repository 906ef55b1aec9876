"""`lifecycle.timeline`: an app's run drawn as a Gantt chart, from `App.report`.

After a run (or during one), in ``main()``::

    code = lifecycle.run(app)
    lifecycle.timeline.write(app.report(), "shutdown.svg")
    sys.exit(code)

or, without a line of code, ``lifecycle run myapp:app --timeline shutdown.svg``.

`svg` draws a self-contained SVG picture (no script, font or URL in it): the
app's phases, one row per component in start order with its start and stop
bars and its stop budget as a faint outline, what overran, failed or was cut
in red with a label, who waited on whom during the stop, the shutdown
request, the drain end and the shutdown deadline as lines. A long quiet
period (hours of running between the start and the shutdown) is drawn as an
axis break, so the start and the shutdown stay readable. `mermaid` gives the
same chart as Mermaid ``gantt`` text; `write` picks one by the file's suffix
(``.svg`` or ``.mmd``). See docs/timeline.md.

Needs nothing beyond lifecycle itself.

Added in 0.4.
"""

from __future__ import annotations

from ._tools.timeline import mermaid, svg, write

__all__ = ["mermaid", "svg", "write"]
