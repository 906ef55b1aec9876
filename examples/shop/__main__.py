"""``python -m examples.shop [demo]``: run the shop, or the SIGTERM-under-load demo.

Without ``REDIS_URL`` in the environment, a private redis-server is started
on a free 127.0.0.1 port for the run and ended by its PID afterwards.
``SHOP_REPORT=path.json`` writes ``app.report()`` there once the app stopped
(the demo reads it to draw the shutdown timeline).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import redis

import lifecycle

from .redis_server import RedisNotStartedError, private_redis


def serve() -> int:
    """Run the shop until SIGTERM or SIGINT; return its exit code."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with contextlib.ExitStack() as stack:
        if not os.environ.get("REDIS_URL"):
            try:
                os.environ["REDIS_URL"] = stack.enter_context(private_redis())
            except RedisNotStartedError as error:
                print(f"shop: {error}", file=sys.stderr)
                return int(lifecycle.ExitCode.FAILED)
            logging.getLogger("shop").info("private redis-server at %s", os.environ["REDIS_URL"])
        from . import app as module  # noqa: PLC0415 - reads the settings, REDIS_URL included

        shop = module.shop
        code = lifecycle.run(shop.app)
        with contextlib.suppress(redis.RedisError):
            # Leave no consumer name behind in the group (refused while it holds entries).
            shop.source.delete_consumer()
        report_path = os.environ.get("SHOP_REPORT")
        if report_path:
            report = shop.app.report()
            report["shipper_stats"] = {
                name: getattr(shop.shipper.stats(), name)
                for name in ("fetched", "handled", "duplicates", "acked", "given_back", "cut")
            }
            Path(report_path).write_text(json.dumps(report, default=str))
    return code


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m examples.shop`` or ``python -m examples.shop demo``."""
    parser = argparse.ArgumentParser(prog="python -m examples.shop", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["serve", "demo"], default="serve")
    parser.add_argument("--demo", action="store_true", help="the same as the demo command")
    parser.add_argument(
        "--timeline", default="shop-timeline.svg", help="demo: where to draw the shutdown"
    )
    args = parser.parse_args(argv)
    if args.demo or args.command == "demo":
        from .demo import run_demo  # noqa: PLC0415

        return run_demo(timeline=args.timeline)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
