"""The command line: ``python -m lifecycle`` and the ``lifecycle`` script.

Commands:

* ``lifecycle run|check|graph MODULE:ATTR``: run an app, validate it and print its
  shutdown budget, draw its dependency graph; see ``lifecycle._tools.cli``.
* ``lifecycle k8s ...``: Kubernetes settings and manifest lint; see ``lifecycle._tools.k8s``.
* ``lifecycle exec [--drain-delay S] [--health [HOST:]PORT] [--ready-port PORT]
  [--stop-timeout S] [--stop-signal NAME] -- CMD ...``: run CMD as the child of a lifecycle app
  (readiness, drain, signal forwarding, reaping, the child's exit code);
  see ``lifecycle._runtime.exec``.
* ``lifecycle demo [--shop]``: SIGTERM under load, a naive server against a managed one;
  with ``--shop``, the demo of ``examples/shop`` (see ``lifecycle._demo.shop``).

This module stays thin and cheap to import: ``exec`` blocks its signals before
anything heavy is imported.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from ._runtime.exec_signals import HANDLED

# ``exec``'s signals (every one it handles), blocked from the moment the command begins
# until its handlers are installed: as PID 1 a signal without a handler is dropped,
# and importing the runtime takes 0.2-1.5 s on a loaded machine.
_EXEC_SIGNALS = HANDLED
_MAX_SECONDS = 365 * 86400.0  # lifecycle._runtime.exec.MAX_SECONDS, without importing it


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= _MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds from 0 to at most {_MAX_SECONDS:.0f} (365 days), "
            f"got {text!r}"
        )
    return value


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected PORT or HOST:PORT (e.g. 8081 or 127.0.0.1:8081), got {text!r}"
        )
    return (host.strip("[]") or "0.0.0.0", number)  # noqa: S104 - probes come from outside


def _port(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port (1-65535), got {text!r}")
    return number


def _signal(text: str) -> signal.Signals:
    from ._runtime.exec import check_stop_signal  # noqa: PLC0415 - keep imports lazy

    name = text.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        found = signal.Signals(int(text)) if text.strip().isdigit() else signal.Signals[name]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown signal {text!r}; e.g. TERM, QUIT, INT, or a number (15)"
        ) from None
    try:
        return check_stop_signal(found)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_exec(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "exec",
        help="run a command as the child of a lifecycle app (PID 1 in a container)",
        description=(
            "Run CMD as the child of a lifecycle app. On SIGTERM or SIGINT: /readyz 503 at "
            "once, the drain delay, then the stop signal to CMD, up to the stop timeout, then "
            "SIGKILL to its process group (exit 3). Exits with CMD's code (128+N if signal N "
            "killed it); 127 if CMD is not found, 126 if it cannot be executed."
        ),
    )
    parser.add_argument(
        "--drain-delay",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="seconds to keep the child serving with readiness 503 before signalling it "
        "(longer than the load balancer takes to notice); default 0",
    )
    parser.add_argument(
        "--stop-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="seconds the child has to exit after the stop signal; then SIGKILL; default 30",
    )
    parser.add_argument(
        "--stop-signal",
        type=_signal,
        default=signal.SIGTERM,
        metavar="NAME",
        help="the signal that asks the child to stop gracefully, by name or number; default "
        "TERM (job-control signals such as STOP are refused: they make no process exit)",
    )
    parser.add_argument(
        "--health",
        type=_address,
        default=None,
        metavar="[HOST:]PORT",
        help="serve /livez, /readyz, /startupz, /status here (all interfaces unless HOST)",
    )
    parser.add_argument(
        "--ready-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="/readyz is 200 only once the child accepts TCP connections on 127.0.0.1:PORT",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="log warnings only")
    parser.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments"
    )


_blocked = False  # whether `main` blocked `_EXEC_SIGNALS`


def _exec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("exec needs a command after --, e.g. lifecycle exec -- gunicorn app:wsgi")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="lifecycle exec: %(message)s",
            stream=sys.stderr,
        )
    from ._runtime.exec import ExecOptions, exec_command  # noqa: PLC0415 - keep imports lazy

    return exec_command(
        ExecOptions(
            command,
            drain_delay=args.drain_delay,
            stop_timeout=args.stop_timeout,
            stop_signal=args.stop_signal,
            health=args.health,
            ready_port=args.ready_port,
        ),
        blocked=_EXEC_SIGNALS if _blocked else (),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lifecycle`` and the ``lifecycle`` script.

    Example::

        sys.exit(main(["exec", "--drain-delay", "5", "--", "gunicorn", "app:wsgi"]))
        sys.exit(main(["run", "myservice.main:app"]))
    """
    global _blocked
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["exec"] and hasattr(signal, "pthread_sigmask") and not _blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, _EXEC_SIGNALS)
        _blocked = True
    from ._tools import cli  # noqa: PLC0415 - after exec's signals are blocked

    if given[:1] == ["k8s"]:
        return cli.k8s(given[1:])
    parser = argparse.ArgumentParser(
        prog="lifecycle",
        description=cli.SUMMARY,
        epilog=cli.EPILOG,
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("--version", action=cli.VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli.add_commands(commands)
    _add_exec(commands)
    demo = commands.add_parser(
        "demo", help="SIGTERM under load: a naive stdlib server against a lifecycle-managed one"
    )
    demo.add_argument(
        "--shop",
        action="store_true",
        help="the same on examples/shop, a FastAPI + Redis service (a checkout, the dev "
        "extra and redis-server; exits 2 naming what is missing)",
    )
    # Internal (the demo's child processes): no help=, so not listed.
    server = commands.add_parser("demo-server")
    server.add_argument("kind", choices=["naive", "managed"])
    server.add_argument("port", type=int)
    server.add_argument("report", nargs="?", default=None)
    args = parser.parse_args(argv)

    if args.command == "exec":
        return _exec(args, commands.choices["exec"])
    handled = cli.dispatch(args)
    if handled is not None:
        return handled

    from ._demo import demo as _demo  # noqa: PLC0415 - keep `import lifecycle` free of the demo

    if args.command == "demo":
        if args.shop:
            from ._demo import shop as _shop  # noqa: PLC0415

            return _shop.main()
        return _demo.main()
    return _demo.serve(args.kind, args.port, args.report)


if __name__ == "__main__":
    sys.exit(main())
