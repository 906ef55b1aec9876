"""examples/shop: a real service under lifecycle, run as a child process with real signals.

- Under a small concurrent keep-alive load, SIGTERM: every request is
  answered or refused at connect (none lost mid-request), every accepted
  order is shipped exactly once (one shipment mark, one mail), nothing is
  left in the stream, exit code 0.
- Without REDIS_URL, ``python -m examples.shop`` starts a private
  redis-server and ends it by PID when it exits.
- The demo command reports 0 lost and exits 0.
- ``lifecycle check`` passes on the app; the manifest's pod spec is what
  ``lifecycle k8s`` derives from the app, and ``k8s lint`` passes on it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import RedisServer, client, free_port, redis_server_or_skip

ROOT = Path(__file__).resolve().parent.parent
APP = "examples.shop.app:app"
MANIFEST = ROOT / "examples" / "shop" / "k8s.yaml"
BOUND = 20.0
"""Seconds any wait here may take before the test fails."""

pytestmark = pytest.mark.process


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the shop's settings (the app's defaults), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", *argv],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )


# -- the declaration and the manifest -------------------------------------------------


def test_check_fits() -> None:
    done = cli("check", APP)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fits, with" in done.stdout
    assert "api 8s -> handoff 8s -> shipper 6s -> emailer 2s -> db 2s" in done.stdout


def pod_spec(documents: list[Any]) -> dict[str, Any]:
    (deployment,) = [d for d in documents if d and d.get("kind") == "Deployment"]
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


SHUTDOWN_KEYS = ("lifecycle", "startupProbe", "readinessProbe", "livenessProbe")


def mismatches(fragment: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Where the manifest's pod spec differs from the fragment `lifecycle k8s` derived."""
    found = []
    for key, value in fragment.items():
        if key != "containers" and spec.get(key) != value:
            found.append(f"{key}: manifest {spec.get(key)!r}, derived {value!r}")
    containers = {c["name"]: c for c in spec.get("containers", [])}
    for wanted in fragment["containers"]:
        have = containers.get(wanted["name"])
        if have is None:
            found.append(f"no container {wanted['name']!r}")
            continue
        found += [  # a key the fragment leaves out must be absent too
            f"{key}: manifest {have.get(key)!r}, derived {wanted.get(key)!r}"
            for key in SHUTDOWN_KEYS
            if have.get(key) != wanted.get(key)
        ]
        found += [
            f"port {port!r} missing from {have.get('ports')!r}"
            for port in wanted.get("ports", [])
            if port not in have.get("ports", [])
        ]
    return found


def test_manifest_holds_the_derived_fragment() -> None:
    yaml = pytest.importorskip("yaml")
    done = cli("k8s", APP, "--format", "json")
    assert done.returncode == 0, done.stderr
    fragment = json.loads(done.stdout)
    spec = pod_spec(list(yaml.safe_load_all(MANIFEST.read_text())))
    assert mismatches(fragment, spec) == []
    # The comparison notices a drift: a grace period edited by hand, a probe moved.
    spec["terminationGracePeriodSeconds"] += 1
    spec["containers"][0]["livenessProbe"]["httpGet"]["path"] = "/readyz"
    assert len(mismatches(fragment, spec)) == 2


def test_k8s_lint_passes() -> None:
    pytest.importorskip("yaml")
    done = cli("k8s", "lint", str(MANIFEST), "--app", APP)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 error(s), 0 warning(s)" in done.stdout


# -- the service, as a child process ----------------------------------------------------


class Shop:
    """``python -m examples.shop`` as a child on 127.0.0.1, its log in a file."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.port, self.health_port = free_port(), free_port()
        self.data = tmp / "data"
        self.log = tmp / "shop.log"
        self.report = tmp / "report.json"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "examples.shop"],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(
                    SHOP_HOST="127.0.0.1",
                    SHOP_PORT=str(self.port),
                    SHOP_HEALTH_PORT=str(self.health_port),
                    SHOP_DATA_DIR=str(self.data),
                    SHOP_CONSUMER="test-1",
                    SHOP_DRAIN_MIN="0.3",
                    SHOP_DRAIN_MAX="1",
                    SHOP_DRAIN_QUIET="0.2",
                    SHOP_STATS_EVERY="0.2",
                    SHOP_SHIP_MS="80",  # slower than the orders come: a backlog at SIGTERM
                    SHOP_REPORT=str(self.report),
                    **env,
                ),
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        until = time.monotonic() + BOUND
        while time.monotonic() < until and self.proc.poll() is None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=1)
                try:
                    conn.request("GET", "/readyz")
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            time.sleep(0.05)
        pytest.fail(f"the shop was not ready within {BOUND}s; its log:\n{self.output()}")

    def end(self) -> None:
        """SIGKILL it by its PID if it is still running (a failed test's cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(BOUND)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.data / 'shop.db'}?mode=ro", uri=True)


@contextlib.contextmanager
def running(tmp: Path, **env: str) -> Iterator[Shop]:
    shop = Shop(tmp, **env)
    try:
        yield shop
    finally:
        shop.end()


def call(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None
) -> tuple[int, Any, bool]:
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read()), response.will_close


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with redis_server_or_skip() as server:
        yield server


def test_sigterm_under_load_answers_every_request_and_ships_every_order(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with running(tmp_path, REDIS_URL=redis_server.url) as shop:
        shop.wait_ready()
        conn = http.client.HTTPConnection("127.0.0.1", shop.port, timeout=BOUND)
        first = []
        for n in range(5):
            status, order, _ = call(conn, "POST", "/orders", {"item": f"warm-{n}", "qty": 1})
            assert status == 201, order
            first.append(order["id"])
        until = time.monotonic() + BOUND  # shipped through the stream, then visible in the API
        while time.monotonic() < until:
            states = {call(conn, "GET", f"/orders/{i}")[1]["status"] for i in first}
            if states == {"shipped"}:
                break
            time.sleep(0.02)
        assert states == {"shipped"}, shop.output()
        assert call(conn, "GET", "/orders/nope")[0] == 404
        conn.close()

        # The load: keep-alive clients until the listener refuses them (bounded).
        lock = threading.Condition()
        counts: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        accepted: set[str] = set(first)
        lost: list[str] = []
        budget = iter(range(600))
        stop_at = time.monotonic() + 15

        def client_loop(n: int) -> None:
            conn: http.client.HTTPConnection | None = None
            while next(budget, None) is not None and time.monotonic() < stop_at:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", shop.port, timeout=BOUND)
                    try:
                        conn.connect()
                    except ConnectionRefusedError:
                        with lock:
                            counts["refused"] += 1
                        return
                with lock:  # orders are bounded too: the shipper must catch up within its budget
                    post = counts["sent"] % 2 == 0 and counts["posts"] < 150
                    counts["posts"] += post
                    counts["sent"] += 1
                try:
                    if post:
                        status, body, close = call(
                            conn, "POST", "/orders", {"item": "x", "qty": n + 1}
                        )
                    else:
                        status, body, close = call(conn, "GET", f"/report?ms={50 + 10 * n}")
                except (OSError, http.client.HTTPException) as error:
                    with lock:
                        lost.append(repr(error))
                    conn.close()
                    conn = None
                    continue
                with lock:
                    counts["answered"] += 1
                    statuses[status] += 1
                    if status == 201:
                        accepted.add(body["id"])
                    lock.notify_all()
                if close:
                    conn.close()
                    conn = None
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(6)]
        for thread in threads:
            thread.start()
        with lock:
            assert lock.wait_for(lambda: counts["answered"] >= 60, BOUND), shop.output()
        r = client(redis_server)
        (group,) = r.xinfo_groups("orders")
        backlog = group["lag"] + group["pending"]  # accepted and not shipped yet
        shop.proc.send_signal(signal.SIGTERM)
        code = shop.proc.wait(BOUND)
        for thread in threads:
            thread.join(BOUND)
        assert not any(t.is_alive() for t in threads)

        output = shop.output()
        assert code == 0, output
        assert lost == [], (lost, output)
        assert counts["answered"] == counts["sent"] > 60
        assert counts["refused"] >= 1  # the load ran into the closed listener: it was mid-load
        assert set(statuses) <= {200, 201}, statuses
        report = json.loads(shop.report.read_text())
        assert report["exit_code"] == 0
        assert {c["state"] for c in report["components"].values()} == {"stopped"}

        # Every accepted order shipped exactly once, its mail sent; no other order.
        db = shop.db()
        try:
            rows = dict(db.execute("SELECT id, status FROM orders").fetchall())
            marks = Counter(r[0] for r in db.execute("SELECT order_id FROM shipments"))
            mailed = {r[0] for r in db.execute("SELECT order_id FROM outbox WHERE sent_at > 0")}
        finally:
            db.close()
        assert set(rows) == accepted
        assert set(rows.values()) == {"shipped"}
        assert marks == Counter(accepted)  # one mark each
        assert mailed == accepted
        # Nothing left in the stream for another replica: the handoff waited for the backlog.
        assert backlog > 0
        assert re.search(r"handoff: shipped the last \d+ orders", output), output
        try:
            assert r.xpending("orders", "shipping")["pending"] == 0
            (group,) = r.xinfo_groups("orders")
            assert group["lag"] == 0
            assert r.xlen("orders") == len(accepted)
        finally:
            r.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_without_redis_url_a_private_redis_runs_and_ends_with_it(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (apt-get install -y redis-server)")
    with running(tmp_path) as shop:
        shop.wait_ready()
        found = re.search(r"private redis-server at redis://127\.0\.0\.1:(\d+)/0", shop.output())
        assert found, shop.output()
        redis_port = int(found.group(1))
        assert not _refused(redis_port)
        conn = http.client.HTTPConnection("127.0.0.1", shop.port, timeout=BOUND)
        status, order, _ = call(conn, "POST", "/orders", {"item": "book", "qty": 1})
        conn.close()
        assert status == 201, order
        shop.proc.send_signal(signal.SIGTERM)
        assert shop.proc.wait(BOUND) == 0, shop.output()
        assert _refused(redis_port), "the private redis-server outlived the shop"


def test_demo_loses_nothing(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (apt-get install -y redis-server)")
    svg = tmp_path / "timeline.svg"
    done = subprocess.run(
        [sys.executable, "-m", "examples.shop", "demo", "--timeline", str(svg)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=3 * BOUND,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sent = re.search(r"requests sent (\d+), answered (\d+) .*, lost (\d+)", done.stdout)
    assert sent, done.stdout
    assert int(sent[1]) == int(sent[2]) > 0, done.stdout
    assert sent[3] == "0", done.stdout
    orders = re.search(r"orders accepted (\d+), shipped (\d+) .* lost (\d+)", done.stdout)
    assert orders, done.stdout
    assert orders[1] == orders[2], done.stdout
    assert int(orders[1]) > 0, done.stdout
    assert orders[3] == "0", done.stdout
    assert "exit code 0;" in done.stdout
    assert svg.exists() or "timeline: skipped" in done.stdout
