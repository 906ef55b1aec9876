"""lifecycle: a framework-agnostic lifecycle manager for Python services.

Declare components and their dependencies; lifecycle starts them in order,
keeps readiness truthful, and on SIGTERM drains and stops them in reverse
order under per-component timeouts, so that a rolling deploy loses nothing.

Everything public is importable from here; the ``_``-prefixed modules are
private and may change at any time. The integrations with third-party servers
are public submodules, each needing its extra (``pip install
'lifecycle[uvicorn]'``): ``lifecycle.uvicorn``, ``lifecycle.gunicorn``,
``lifecycle.grpc``, ``lifecycle.aiohttp``, ``lifecycle.redis``. ``import
lifecycle`` imports none of them; naming one (``lifecycle.uvicorn.Server``)
imports it then.
"""

import importlib as _importlib

from ._core.drain import Drain as Drain
from ._core.errors import Cancelled as Cancelled
from ._core.errors import ConfigError as ConfigError
from ._core.errors import CycleError as CycleError
from ._core.errors import DeadlineExceeded as DeadlineExceeded
from ._core.errors import DependencyFailed as DependencyFailed
from ._core.errors import DuplicateComponent as DuplicateComponent
from ._core.errors import InvalidTransition as InvalidTransition
from ._core.errors import LifecycleError as LifecycleError
from ._core.errors import NotAComponent as NotAComponent
from ._core.errors import StartupError as StartupError
from ._core.errors import UnknownDependency as UnknownDependency
from ._core.restart import RestartLimitReached as RestartLimitReached
from ._core.restart import RestartPolicy as RestartPolicy
from ._core.scheduler import ComponentInfo as ComponentInfo
from ._core.states import AppState as AppState
from ._core.states import ComponentState as ComponentState
from ._core.states import ExitCode as ExitCode
from ._core.tokens import DEADLINE_EXCEEDED as DEADLINE_EXCEEDED
from ._core.tokens import CancelSource as CancelSource
from ._core.tokens import CancelToken as CancelToken
from ._core.tokens import DeadlineTimer as DeadlineTimer
from ._core.tokens import cancel_scope as cancel_scope
from ._core.tokens import current_token as current_token
from ._core.tokens import use_token as use_token
from ._runtime.app import App as App
from ._runtime.app import ShutdownPlan as ShutdownPlan
from ._runtime.loop import asyncio_run as asyncio_run
from ._runtime.processes import ChildStatus as ChildStatus
from ._runtime.processes import ProcessesKilled as ProcessesKilled
from ._runtime.processes import ProcessGroup as ProcessGroup
from ._runtime.processes import ProcessGroupFailed as ProcessGroupFailed
from ._runtime.processes import ProcessStopTimedOut as ProcessStopTimedOut
from ._runtime.runners import AsyncioRunner as AsyncioRunner
from ._runtime.runners import ThreadedRunner as ThreadedRunner
from ._runtime.runners import run as run
from ._serving.aioserver import AsyncStreamServer as AsyncStreamServer
from ._serving.asgi import ASGIMiddleware as ASGIMiddleware
from ._serving.h1 import Limits as HTTPLimits
from ._serving.health import HealthServer as HealthServer
from ._serving.http import HTTPServer as HTTPServer
from ._serving.http import TCPServer as TCPServer
from ._serving.http import mark_long_lived as mark_long_lived
from ._serving.inflight import InFlight as InFlight
from ._serving.inflight import Refused as Refused
from ._serving.inflight import Ticket as Ticket
from ._serving.wsgi import WSGIMiddleware as WSGIMiddleware
from ._serving.wsgi import WSGIServer as WSGIServer
from ._workers.consumer import AsyncConsumer as AsyncConsumer
from ._workers.consumer import AsyncMessageSource as AsyncMessageSource
from ._workers.consumer import AsyncQueueSource as AsyncQueueSource
from ._workers.consumer import Consumer as Consumer
from ._workers.consumer import ConsumerStats as ConsumerStats
from ._workers.consumer import Message as Message
from ._workers.consumer import MessageSource as MessageSource
from ._workers.consumer import QueueSource as QueueSource
from ._workers.dedupe import Claim as Claim
from ._workers.dedupe import Dedupe as Dedupe
from ._workers.dedupe import MemoryDedupe as MemoryDedupe
from ._workers.periodic import PeriodicWorker as PeriodicWorker

__version__ = "0.1.0.dev0"

# The public submodules imported when first named: the optional integrations
# (each imports its server package), the timeline drawing and the pytest plugin.
_INTEGRATIONS = frozenset(
    {"uvicorn", "gunicorn", "grpc", "aiohttp", "redis", "timeline", "testing"}
)


def __getattr__(name: str) -> object:
    """Import an integration submodule when it is first named: ``lifecycle.uvicorn``."""
    if name in _INTEGRATIONS:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEADLINE_EXCEEDED",
    "ASGIMiddleware",
    "App",
    "AppState",
    "AsyncConsumer",
    "AsyncMessageSource",
    "AsyncQueueSource",
    "AsyncStreamServer",
    "AsyncioRunner",
    "CancelSource",
    "CancelToken",
    "Cancelled",
    "ChildStatus",
    "Claim",
    "ComponentInfo",
    "ComponentState",
    "ConfigError",
    "Consumer",
    "ConsumerStats",
    "CycleError",
    "DeadlineExceeded",
    "DeadlineTimer",
    "Dedupe",
    "DependencyFailed",
    "Drain",
    "DuplicateComponent",
    "ExitCode",
    "HTTPLimits",
    "HTTPServer",
    "HealthServer",
    "InFlight",
    "InvalidTransition",
    "LifecycleError",
    "MemoryDedupe",
    "Message",
    "MessageSource",
    "NotAComponent",
    "PeriodicWorker",
    "ProcessGroup",
    "ProcessGroupFailed",
    "ProcessStopTimedOut",
    "ProcessesKilled",
    "QueueSource",
    "Refused",
    "RestartLimitReached",
    "RestartPolicy",
    "ShutdownPlan",
    "StartupError",
    "TCPServer",
    "ThreadedRunner",
    "Ticket",
    "UnknownDependency",
    "WSGIMiddleware",
    "WSGIServer",
    "asyncio_run",
    "cancel_scope",
    "current_token",
    "mark_long_lived",
    "run",
    "use_token",
]
