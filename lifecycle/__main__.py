"""``python -m lifecycle``: the command line (today: the demo)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m lifecycle`` and the ``lifecycle`` script."""
    parser = argparse.ArgumentParser(prog="lifecycle", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo", help="SIGTERM under load: a naive stdlib server against a lifecycle-managed one"
    )
    server = commands.add_parser("demo-server", help="run one of the demo's servers (internal)")
    server.add_argument("kind", choices=["naive", "managed"])
    server.add_argument("port", type=int)
    server.add_argument("report", nargs="?", default=None)
    args = parser.parse_args(argv)

    from ._demo import demo as _demo  # noqa: PLC0415 - keep `import lifecycle` free of the demo

    if args.command == "demo":
        return _demo.main()
    return _demo.serve(args.kind, args.port, args.report)


if __name__ == "__main__":
    sys.exit(main())
