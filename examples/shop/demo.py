"""``python -m examples.shop demo``: the shop under load, sent SIGTERM mid-load.

It starts the shop as a child process (``python -m examples.shop``, with a
private redis-server unless ``REDIS_URL`` is set, and a temporary data
folder), waits for ``/readyz``, sends a bounded load on keep-alive
connections (`examples.shop.load`: orders, lookups, slow reports), sends
SIGTERM once a fifth of it was answered, lets the load run into the
shutdown, and prints what happened: requests sent, answered, refused at
connect and lost; orders accepted, shipped (each exactly once) and lost; the
exit code and how long the shutdown took. With `lifecycle.timeline`
available it draws the shutdown (``shop-timeline.svg``).

Expected: 0 requests lost, 0 orders lost, exit code 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .load import Load
from .redis_server import end, free_port, private_redis

ROOT = Path(__file__).resolve().parents[2]
READY_BOUND = 30.0
EXIT_BOUND = 60.0
SHIP_BOUND = 10.0


def child_env(redis_url: str, data_dir: Path, port: int, health_port: int) -> dict[str, str]:
    """The environment of a shop child: loopback only, quick drain, a report file."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "SHOP_HOST": "127.0.0.1",
        "SHOP_PORT": str(port),
        "SHOP_HEALTH_PORT": str(health_port),
        "SHOP_DATA_DIR": str(data_dir),
        "SHOP_CONSUMER": f"demo-{port}",
        "SHOP_DRAIN_MIN": "0.5",
        "SHOP_DRAIN_MAX": "1.5",
        "SHOP_DRAIN_QUIET": "0.3",
        "SHOP_STATS_EVERY": "0.5",
        "SHOP_SHIP_MS": "40",  # slower than the orders come: the handoff has work
        "SHOP_REPORT": str(data_dir / "report.json"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def wait_ready(health_port: int, child: subprocess.Popen[bytes], bound: float) -> bool:
    """Poll ``/readyz`` until it answers 200, the child exits, or ``bound`` seconds pass."""
    until = time.monotonic() + bound
    url = f"http://127.0.0.1:{health_port}/readyz"
    while time.monotonic() < until and child.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return True
        time.sleep(0.05)
    return False


def order_counts(db_path: Path, accepted: set[str]) -> dict[str, int]:
    """Of the ``accepted`` ids: how many are shipped, have one shipment mark, a mail sent."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        shipped = marks = mailed = 0
        for order_id in accepted:
            row = conn.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()
            shipped += row is not None and row[0] == "shipped"
            marks += (
                conn.execute(
                    "SELECT COUNT(*) FROM shipments WHERE order_id = ?", (order_id,)
                ).fetchone()[0]
                == 1
            )
            mailed += conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE order_id = ? AND sent_at IS NOT NULL",
                (order_id,),
            ).fetchone()[0]
        return {"shipped": shipped, "once": marks, "mailed": mailed}
    finally:
        conn.close()


def draw(report: dict[str, Any], path: str) -> str:
    """Write the timeline picture when `lifecycle.timeline` exists; say what happened."""
    try:
        from lifecycle import timeline  # noqa: PLC0415 - optional
    except ImportError:
        return "timeline: skipped (lifecycle.timeline is not available)"
    try:
        timeline.write(report, path)
    except Exception as error:  # noqa: BLE001 - a picture never fails the demo
        return f"timeline: not written ({error})"
    return f"timeline: {path}"


def run_demo(
    *,
    clients: int = 8,
    total: int = 900,
    seconds: float = 20.0,
    timeline: str = "shop-timeline.svg",
) -> int:
    """Run the demo; 0 when nothing was lost and the shop exited 0, else 1."""
    with contextlib.ExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL") or stack.enter_context(private_redis())
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shop-demo-")))
        port, health_port = free_port(), free_port()
        log_path = data_dir / "shop.log"
        with log_path.open("wb") as log_file:
            child = subprocess.Popen(
                [sys.executable, "-m", "examples.shop"],
                env=child_env(redis_url, data_dir, port, health_port),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        stack.callback(end, child)
        print(f"shop: pid {child.pid}, API 127.0.0.1:{port}, health 127.0.0.1:{health_port}")
        if not wait_ready(health_port, child, READY_BOUND):
            print(f"shop did not become ready in {READY_BOUND:g}s; its log:")
            print(log_path.read_text(errors="replace")[-3000:])
            return 1
        load = Load(port, clients=clients, total=total, seconds=seconds)
        load.start()
        load.wait_answered(total // 5, timeout=seconds)
        print(f"SIGTERM after {load.result().answered} answered requests")
        signalled = time.monotonic()
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(EXIT_BOUND)
        except subprocess.TimeoutExpired:
            print(f"the shop did not exit within {EXIT_BOUND:g}s of SIGTERM; killing it")
            child.kill()
            code = child.wait(5)
        took = time.monotonic() - signalled
        load.join()
        result = load.result()
        counts = order_counts(data_dir / "shop.db", result.accepted)
        lost_orders = len(result.accepted) - counts["shipped"]
        report_path = data_dir / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        phases = report.get("phases", {})
        print(result.line())
        for error in result.errors[:5]:
            print(f"  lost: {error}")
        print(
            f"orders accepted {len(result.accepted)}, shipped {counts['shipped']} "
            f"(exactly once: {counts['once']}), mails sent {counts['mailed']}, lost {lost_orders}"
        )
        if "draining" in phases and "stopped" in phases:
            drain = phases["stopping"] - phases["draining"]
            stop = phases["stopped"] - phases["stopping"]
            print(
                f"exit code {code}; SIGTERM to exit {took:.2f}s "
                f"(drain {drain:.2f}s, stop {stop:.2f}s)"
            )
        else:
            print(f"exit code {code}; SIGTERM to exit {took:.2f}s")
        for line in log_path.read_text(errors="replace").splitlines():
            if "shop: handoff:" in line:
                print(line.split("shop: ", 1)[1])
        if report:
            print(draw(report, timeline))
        ok = result.lost == 0 and lost_orders == 0 and code == 0
        if not ok:
            print(
                f"something was lost; the shop's log ends with:\n"
                f"{log_path.read_text(errors='replace')[-3000:]}"
            )
        return 0 if ok else 1
