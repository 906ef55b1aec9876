"""The commands of the command line that take an application: run, check, graph (and k8s).

Each names its application as ``MODULE:ATTRIBUTE``: an `App`, or a function
returning one, imported with the current directory on ``sys.path``
(`lifecycle._tools.plan.load_app`).

* ``lifecycle run MODULE:ATTR``: run it (``lifecycle.run``), logs configured
  for the process, exit with the app's exit code.
* ``lifecycle check MODULE:ATTR``: validate the declaration and print the start
  order, the start waves and the shutdown budget; exit 2 on an invalid
  declaration, 1 when the worst-case shutdown overruns ``shutdown_timeout``.
* ``lifecycle graph MODULE:ATTR``: the dependency graph as text, Mermaid or DOT.
* ``lifecycle k8s ...``: handed over whole to ``lifecycle._tools.k8s.main``.

Nothing here is imported by the library; ``lifecycle/__main__.py`` builds the
parser with `add_commands` and hands the parsed arguments to `dispatch`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._runtime.app import App
    from .plan import Plan

__all__ = [
    "EPILOG",
    "SUMMARY",
    "HelpFormatter",
    "VersionAction",
    "add_commands",
    "dispatch",
    "k8s",
    "version",
]

SUMMARY = (
    "lifecycle: start a service's components in dependency order, keep its health "
    "truthful, and stop them gracefully on SIGTERM."
)
EPILOG = """\
examples:
  lifecycle run myservice.main:app           run an App (or a function returning one)
  lifecycle check myservice.main:app         validate it; print its shutdown budget
  lifecycle graph myservice.main:app --format mermaid
  lifecycle k8s myservice.main:app           Kubernetes settings that fit the app
  lifecycle exec --drain-delay 5 -- gunicorn app:wsgi

exit codes of run: 0 clean stop, 1 a component failed, 2 invalid declaration,
3 the shutdown ran past a timeout, 128+N forced by a second signal N.
Type lifecycle COMMAND --help for a command's options."""

_SPEC_HELP = (
    "the application: MODULE:ATTRIBUTE naming a lifecycle.App or a function returning "
    "one, e.g. myservice.main:app (imported with the current directory on sys.path)"
)
_K8S_HELP = "Kubernetes: probe, preStop and grace-period settings for an app; lint manifests"
_FORMATS = ("console", "json", "plain")
_TIMELINE_SUFFIXES = (".svg", ".mmd")
_EXIT_OK, _EXIT_OVERRUN, _EXIT_CONFIG = 0, 1, 2


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, keeping paragraphs: each is wrapped on its own.

    A paragraph (text between blank lines) whose lines are indented, or
    that spans several lines, is kept as written (examples, tables).
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if "\n" in paragraph.strip("\n") or paragraph.startswith(" "):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(
                    textwrap.fill(paragraph, width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n\n".join(paragraphs)


def version() -> str:
    """The installed version of lifecycle (package metadata, else ``lifecycle.__version__``).

    Example::

        print(version())   # 0.1.0
    """
    from importlib import metadata  # noqa: PLC0415 - only --version needs it

    try:
        return metadata.version("lifecycle")
    except metadata.PackageNotFoundError:
        import lifecycle  # noqa: PLC0415 - the fallback only

        return str(getattr(lifecycle, "__version__", "unknown"))


class VersionAction(argparse.Action):
    """``--version``: print ``lifecycle VERSION`` and exit 0 (the version is read only then)."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = argparse.SUPPRESS,
        default: str = argparse.SUPPRESS,
        help: str | None = "print the version of lifecycle and exit",
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"lifecycle {version()}")
        parser.exit()


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run``, ``check``, ``graph`` and ``k8s`` to the top-level parser's commands."""
    formatter = HelpFormatter

    run = commands.add_parser(
        "run",
        help="run an app until SIGTERM/SIGINT; exit with its exit code",
        formatter_class=formatter,
        description=(
            "Import MODULE:ATTRIBUTE and run the App: start its components in dependency "
            "order, serve until SIGTERM or SIGINT, drain, stop them in reverse order.\n\n"
            "Logs: pretty console lines when standard output is a terminal, one JSON object "
            "per line otherwise, unless --log-format says; when the application configured "
            "structlog or logging itself, that configuration is kept (unless --log-format "
            "is given).\n\n"
            "Exit codes: 0 clean stop (SIGTERM included), 1 a critical component failed, "
            "2 invalid declaration or application not found, 3 the shutdown ran past a "
            "timeout, 128+N when a second signal N forced the exit."
        ),
    )
    run.add_argument("spec", metavar="MODULE:ATTR", help=_SPEC_HELP)
    run.add_argument(
        "--runner",
        choices=("auto", "thread", "asyncio"),
        default="auto",
        help="the driver: thread, asyncio, or auto (asyncio when any component is async); "
        "default auto",
    )
    run.add_argument(
        "--log-format",
        choices=_FORMATS,
        default=None,
        help="console (readable, colours on a terminal), json (one object per line) or plain "
        "(stdlib logging lines); default: console on a terminal, json otherwise",
    )
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the lowest level logged; default info",
    )
    run.add_argument(
        "--timeline",
        metavar="PATH",
        default=None,
        help="after the run, draw the shutdown timeline to PATH: an SVG picture (.svg) or "
        "a Mermaid gantt chart (.mmd)",
    )

    check = commands.add_parser(
        "check",
        help="validate an app's declaration; print its start order and shutdown budget",
        formatter_class=formatter,
        description=(
            "Import MODULE:ATTRIBUTE and validate its declaration without starting anything. "
            "Prints the start order, the waves of components that start concurrently, and "
            "the shutdown budget: the drain delay plus the longest chain of stop timeouts, "
            "against shutdown_timeout.\n\n"
            "Exit codes: 0 valid and the budget fits, 1 the worst-case shutdown overruns "
            "shutdown_timeout (the last components would be cut), 2 invalid declaration "
            "(a cycle, an unknown dependency) or application not found."
        ),
    )
    check.add_argument("spec", metavar="MODULE:ATTR", help=_SPEC_HELP)
    check.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people, json for scripts; default text",
    )

    graph = commands.add_parser(
        "graph",
        help="print an app's dependency graph (text, Mermaid or DOT)",
        formatter_class=formatter,
        description=(
            "Import MODULE:ATTRIBUTE and print its dependency graph. An edge A -> B means "
            "A depends on B: B starts before A and stops after it.\n\n"
            "Formats: text (one line per component, in start order), mermaid (a flowchart "
            "for Markdown pages), dot (Graphviz: pipe it to dot -Tsvg), json."
        ),
    )
    graph.add_argument("spec", metavar="MODULE:ATTR", help=_SPEC_HELP)
    graph.add_argument(
        "--format",
        choices=("text", "mermaid", "dot", "json"),
        default="text",
        help="text, mermaid, dot or json; default text",
    )

    # Listed here for the help; `lifecycle k8s ...` is dispatched before parsing (see `k8s`).
    commands.add_parser("k8s", help=_K8S_HELP, add_help=False)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the command ``args`` were parsed for, if it is one of this module's; else None."""
    command: Callable[[argparse.Namespace], int] | None = {
        "run": _run,
        "check": _check,
        "graph": _graph,
    }.get(args.command)
    return None if command is None else command(args)


def k8s(argv: Sequence[str]) -> int:
    """``lifecycle k8s ARGS``: hand ARGS (what follows ``k8s``) to the Kubernetes tool."""
    try:
        from . import k8s as tool  # type: ignore[attr-defined, unused-ignore]  # noqa: PLC0415
    except ImportError as error:
        if error.name != f"{__package__}.k8s":
            raise
        _fail("k8s", "the Kubernetes tool is not part of this installation of lifecycle")
        return _EXIT_CONFIG
    result: int = tool.main(list(argv))
    return result


# -- helpers -----------------------------------------------------------------------------


def _fail(command: str, message: str) -> None:
    print(f"lifecycle {command}: error: {message}", file=sys.stderr)


def _load(command: str, spec: str) -> App | None:
    """The app ``spec`` names, or None once the reason was printed."""
    from .._core.errors import ConfigError  # noqa: PLC0415 - keep the parser cheap
    from .plan import load_app  # noqa: PLC0415

    try:
        return load_app(spec)
    except ConfigError as error:
        _fail(command, str(error))
        return None


def _seconds(value: float) -> str:
    return "no limit" if math.isinf(value) else f"{value:g}s"


def _jsonable(value: object) -> object:
    """``value`` with infinities as None (no limit): JSON has no Infinity."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# -- run ---------------------------------------------------------------------------------


def configure_logging(log_format: str, level: int, stream: IO[str]) -> None:
    """Send every log event of the process to ``stream`` in ``log_format``.

    ``console`` and ``json`` configure structlog to hand its events to stdlib
    ``logging``, whose root handler renders them, and the records of other
    libraries alike, with structlog's console or JSON renderer; ``plain``
    leaves structlog alone and gives stdlib ``logging`` a plain line format
    (lifecycle then logs ``event key=value`` messages through it).
    """
    import structlog  # noqa: PLC0415 - only run needs it

    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "plain":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s %(name)s: %(message)s"))
        structlog.reset_defaults()
        return
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    last: list[Any]
    if log_format == "json":
        last = [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(default=repr),
        ]
    else:
        last = [structlog.dev.ConsoleRenderer(colors=_isatty(stream))]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
        )
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _app_configured_logging() -> bool:
    import structlog  # noqa: PLC0415

    return structlog.is_configured() or bool(logging.getLogger().handlers)


def _run(args: argparse.Namespace) -> int:
    writer: Callable[[dict[str, Any], str], None] | None = None
    if args.timeline is not None:
        path = str(args.timeline)
        if not path.endswith(_TIMELINE_SUFFIXES):
            _fail(
                "run",
                f"--timeline {path}: the file name must end in .svg (a picture) or .mmd "
                f"(a Mermaid chart), e.g. --timeline shutdown.svg",
            )
            return _EXIT_CONFIG
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            _fail("run", f"--timeline {path}: the folder {folder} does not exist; create it first")
            return _EXIT_CONFIG
        from . import timeline  # noqa: PLC0415 - keep the parser cheap

        writer = timeline.write
    app = _load("run", args.spec)
    if app is None:
        return _EXIT_CONFIG
    if args.log_format is not None or not _app_configured_logging():
        log_format = args.log_format or ("console" if _isatty(sys.stdout) else "json")
        configure_logging(log_format, getattr(logging, args.log_level.upper()), sys.stdout)

    from .._core.log import get_logger  # noqa: PLC0415
    from .._runtime.runners import run  # noqa: PLC0415

    get_logger().info(
        "lifecycle run", app=app.name, spec=args.spec, runner=args.runner, pid=os.getpid()
    )
    code = run(app, runner=args.runner)
    if writer is not None:
        try:
            writer(app.report(), str(args.timeline))
        except Exception as error:  # noqa: BLE001 - the app's exit code still stands
            get_logger().error("timeline not written", path=str(args.timeline), error=f"{error!r}")
        else:
            get_logger().info("timeline written", path=str(args.timeline))
    return int(code)


# -- check -------------------------------------------------------------------------------


def _plan_or_fail(command: str, spec: str, as_json: bool) -> tuple[App, Plan] | int:
    from .._core.errors import ConfigError  # noqa: PLC0415
    from .plan import plan  # noqa: PLC0415

    app = _load(command, spec)
    if app is None:
        if as_json:
            print(json.dumps({"spec": spec, "ok": False, "error": "not loaded"}))
        return _EXIT_CONFIG
    try:
        return app, plan(app)
    except ConfigError as error:
        if as_json:
            print(
                json.dumps(
                    {
                        "spec": spec,
                        "name": app.name,
                        "ok": False,
                        "error": str(error),
                        "error_type": type(error).__name__,
                    }
                )
            )
        _fail(command, f"app {app.name!r} ({spec}) is invalid: {error}")
        return _EXIT_CONFIG


def _check(args: argparse.Namespace) -> int:
    loaded = _plan_or_fail("check", args.spec, args.format == "json")
    if isinstance(loaded, int):
        return loaded
    _, p = loaded
    code = _EXIT_OVERRUN if p.overrun else _EXIT_OK
    if args.format == "json":
        body = {"spec": args.spec, "ok": not p.overrun, **p.as_dict()}
        print(json.dumps(_jsonable(body), indent=2))
    else:
        print(_describe_plan(p))
    return code


def _describe_plan(p: Plan) -> str:
    count = len(p.start_order)
    lines = [f"app {p.name!r}: {count} component{'' if count == 1 else 's'}, valid"]
    lines.append(f"start order: {', '.join(p.start_order) or '(none)'}")
    lines.append("start waves (the components of a wave start concurrently):")
    lines.extend(f"  {i}. {', '.join(wave)}" for i, wave in enumerate(p.waves, 1))
    lines.append("stop waves (in stop order; concurrently within a wave):")
    lines.extend(f"  {i}. {', '.join(wave)}" for i, wave in enumerate(p.stop_waves, 1))
    if p.drain_min == p.drain_max:
        drain = _seconds(p.drain_max)
    else:
        drain = f"{_seconds(p.drain_min)} to {_seconds(p.drain_max)}"
    steps = zip(p.stop_path, p.stop_budgets, strict=True)
    path = " -> ".join(f"{n} {_seconds(t)}" for n, t in steps) or "nothing to stop"
    lines.append("shutdown budget (worst case):")
    lines.append(f"  drain delay        {drain}")
    lines.append(f"  longest stop path  {_seconds(p.stop_seconds)}  ({path})")
    lines.append(f"  needed             {_seconds(p.needed)}")
    lines.append(f"  shutdown_timeout   {_seconds(p.shutdown_timeout)}")
    if p.overrun and math.isinf(p.needed):
        lines.append(
            f"OVERRUN: the stop path has no limit (a stop_timeout of math.inf) but "
            f"shutdown_timeout is {_seconds(p.shutdown_timeout)}: give the components on the "
            f"path a finite stop_timeout."
        )
    elif p.overrun:
        over = p.needed - p.shutdown_timeout
        lines.append(
            f"OVERRUN by {_seconds(over)}: a slow shutdown is cut before the last components "
            f"stop. Raise shutdown_timeout to at least {p.needed:g} (App(shutdown_timeout=...)), "
            f"or lower the drain delay or the stop_timeout of a component on the path."
        )
    elif math.isinf(p.shutdown_timeout):
        lines.append("fits: shutdown_timeout sets no limit")
    else:
        lines.append(f"fits, with {_seconds(p.shutdown_timeout - p.needed)} to spare")
    if p.health is not None:
        host, port = p.health
        where = f"{host}, a port the system picks" if port == 0 else f"http://{host}:{port}"
        lines.append(f"health endpoint: {where} (/livez, /readyz, /startupz, /status)")
    return "\n".join(lines)


# -- graph -------------------------------------------------------------------------------


def _graph(args: argparse.Namespace) -> int:
    loaded = _plan_or_fail("graph", args.spec, as_json=False)
    if isinstance(loaded, int):
        return loaded
    app, p = loaded
    depends_on = dict(app.graph().depends_on)
    render = {"text": _text, "mermaid": mermaid, "dot": dot, "json": _json}[args.format]
    print(render(p.name, p.start_order, depends_on))
    return _EXIT_OK


def _text(name: str, order: Sequence[str], depends_on: Mapping[str, Sequence[str]]) -> str:
    width = max((len(n) for n in order), default=0)
    lines = [f"app {name!r}: {len(order)} components, in start order"]
    for n in order:
        deps = depends_on[n]
        lines.append(f"  {n:<{width}}  depends on {', '.join(deps)}" if deps else f"  {n}")
    return "\n".join(lines)


def _json(name: str, order: Sequence[str], depends_on: Mapping[str, Sequence[str]]) -> str:
    return json.dumps(
        {
            "name": name,
            "start_order": list(order),
            "depends_on": {n: list(depends_on[n]) for n in order},
        },
        indent=2,
    )


def mermaid(name: str, order: Sequence[str], depends_on: Mapping[str, Sequence[str]]) -> str:
    """A Mermaid flowchart: one node per component, ``A --> B`` when A depends on B.

    Example::

        >>> print(mermaid("shop", ["db", "api"], {"db": [], "api": ["db"]}))
        flowchart TD
            %% shop: an edge A --> B means A depends on B
            n0["db"]
            n1["api"]
            n1 --> n0
    """
    ids = {n: f"n{i}" for i, n in enumerate(order)}

    def label(text: str) -> str:
        return text.replace("&", "#amp;").replace('"', "#quot;").replace("\n", " ")

    lines = ["flowchart TD", f"    %% {label(name)}: an edge A --> B means A depends on B"]
    lines.extend(f'    {ids[n]}["{label(n)}"]' for n in order)
    lines.extend(f"    {ids[n]} --> {ids[d]}" for n in order for d in depends_on[n])
    return "\n".join(lines)


def dot(name: str, order: Sequence[str], depends_on: Mapping[str, Sequence[str]]) -> str:
    """A Graphviz digraph: ``"A" -> "B"`` when A depends on B.

    Example::

        >>> print(dot("shop", ["db", "api"], {"db": [], "api": ["db"]}))
        digraph "shop" {
          // an edge A -> B means A depends on B
          node [shape=box];
          "db";
          "api";
          "api" -> "db";
        }
    """

    def quote(text: str) -> str:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'

    lines = [f"digraph {quote(name)} {{", "  // an edge A -> B means A depends on B"]
    lines.append("  node [shape=box];")
    lines.extend(f"  {quote(n)};" for n in order)
    lines.extend(f"  {quote(n)} -> {quote(d)};" for n in order for d in depends_on[n])
    lines.append("}")
    return "\n".join(lines)
