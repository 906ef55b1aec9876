"""The shop's settings, read from environment variables, each with a default.

Every name starts with ``SHOP_`` except ``REDIS_URL``, as most platforms name
it. The defaults are the container's: listen on all interfaces, the API on
8000, the health endpoint on 8081 (what ``k8s.yaml`` declares), a drain of
5 to 10 seconds. A laptop or a test overrides what it needs::

    SHOP_HOST=127.0.0.1 SHOP_PORT=0 SHOP_DRAIN_MIN=0.2 python -m examples.shop
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    """An environment variable holds a value the shop cannot use."""


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number; e.g. {name}={default:g}") from None
    if not value >= 0 or value == float("inf"):
        raise SettingsError(f"{name}={raw!r} must be a finite number >= 0; e.g. {name}={default:g}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise SettingsError(f"{name}={raw!r} is not a port (0..65535; 0 picks a free one)")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    """What the shop reads from its environment (see `from_env` for the names)."""

    host: str = "0.0.0.0"  # in a container: the kubelet probes the pod IP
    port: int = 8000
    health_port: int = 8081
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("shop-data")
    pool_size: int = 4
    consumer: str = "shop"
    drain_min: float = 5.0
    drain_max: float = 10.0
    drain_quiet: float = 1.0
    stats_every: float = 5.0
    ship_ms: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``).

        ``SHOP_HOST``, ``SHOP_PORT``, ``SHOP_HEALTH_PORT``, ``REDIS_URL``,
        ``SHOP_DATA_DIR``, ``SHOP_POOL_SIZE``, ``SHOP_CONSUMER`` (this
        replica's name in the Redis consumer group: the host name by
        default, which is the pod's name in Kubernetes), ``SHOP_DRAIN_MIN``,
        ``SHOP_DRAIN_MAX``, ``SHOP_DRAIN_QUIET``, ``SHOP_STATS_EVERY``
        (seconds) and ``SHOP_SHIP_MS`` (milliseconds each shipment waits, as
        for a carrier's API: 0 by default; the demo and the test slow the
        shipper down so that a backlog builds up and the handoff has work).

        Example:
            >>> Settings.from_env({"SHOP_PORT": "9000"}).port
            9000
        """
        env = os.environ if env is None else env
        base = cls()
        pool_size = int(_number(env, "SHOP_POOL_SIZE", base.pool_size))
        if pool_size < 1:
            raise SettingsError(f"SHOP_POOL_SIZE={pool_size} must be at least 1")
        drain_min = _number(env, "SHOP_DRAIN_MIN", base.drain_min)
        drain_max = _number(env, "SHOP_DRAIN_MAX", max(base.drain_max, drain_min))
        if drain_max < drain_min:
            raise SettingsError(
                f"SHOP_DRAIN_MAX={drain_max:g} is below SHOP_DRAIN_MIN={drain_min:g}; "
                f"raise SHOP_DRAIN_MAX to at least {drain_min:g}"
            )
        return cls(
            host=env.get("SHOP_HOST") or base.host,
            port=_port(env, "SHOP_PORT", base.port),
            health_port=_port(env, "SHOP_HEALTH_PORT", base.health_port),
            redis_url=env.get("REDIS_URL") or base.redis_url,
            data_dir=Path(env.get("SHOP_DATA_DIR") or base.data_dir),
            pool_size=pool_size,
            consumer=env.get("SHOP_CONSUMER") or socket.gethostname(),
            drain_min=drain_min,
            drain_max=drain_max,
            drain_quiet=_number(env, "SHOP_DRAIN_QUIET", base.drain_quiet) or base.drain_quiet,
            stats_every=_number(env, "SHOP_STATS_EVERY", base.stats_every) or base.stats_every,
            ship_ms=_number(env, "SHOP_SHIP_MS", base.ship_ms),
        )
