"""lifecycle: a framework-agnostic lifecycle manager for Python services.

Declare components and their dependencies; lifecycle starts them in order,
keeps readiness truthful, and on SIGTERM drains and stops them in reverse
order under per-component timeouts, so that a rolling deploy loses nothing.

Everything public is importable from here; the ``_``-prefixed modules are
private and may change at any time.
"""

from ._aioserver import AsyncStreamServer as AsyncStreamServer
from ._app import App as App
from ._app import ShutdownPlan as ShutdownPlan
from ._asgi import ASGIMiddleware as ASGIMiddleware
from ._errors import Cancelled as Cancelled
from ._errors import ConfigError as ConfigError
from ._errors import CycleError as CycleError
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import DuplicateComponent as DuplicateComponent
from ._errors import InvalidTransition as InvalidTransition
from ._errors import LifecycleError as LifecycleError
from ._errors import NotAComponent as NotAComponent
from ._errors import StartupError as StartupError
from ._errors import UnknownDependency as UnknownDependency
from ._health import HealthServer as HealthServer
from ._http import HTTPServer as HTTPServer
from ._http import TCPServer as TCPServer
from ._http import mark_long_lived as mark_long_lived
from ._inflight import InFlight as InFlight
from ._inflight import Refused as Refused
from ._inflight import Ticket as Ticket
from ._runners import AsyncioRunner as AsyncioRunner
from ._runners import ThreadedRunner as ThreadedRunner
from ._runners import run as run
from ._scheduler import ComponentInfo as ComponentInfo
from ._states import AppState as AppState
from ._states import ComponentState as ComponentState
from ._states import ExitCode as ExitCode
from ._tokens import DEADLINE_EXCEEDED as DEADLINE_EXCEEDED
from ._tokens import CancelSource as CancelSource
from ._tokens import CancelToken as CancelToken
from ._tokens import DeadlineTimer as DeadlineTimer
from ._tokens import cancel_scope as cancel_scope
from ._tokens import current_token as current_token
from ._tokens import use_token as use_token
from ._wsgi import WSGIMiddleware as WSGIMiddleware
from ._wsgi import WSGIServer as WSGIServer

__version__ = "0.1.0.dev0"

__all__ = [
    "DEADLINE_EXCEEDED",
    "ASGIMiddleware",
    "App",
    "AppState",
    "AsyncStreamServer",
    "AsyncioRunner",
    "CancelSource",
    "CancelToken",
    "Cancelled",
    "ComponentInfo",
    "ComponentState",
    "ConfigError",
    "CycleError",
    "DeadlineExceeded",
    "DeadlineTimer",
    "DuplicateComponent",
    "ExitCode",
    "HTTPServer",
    "HealthServer",
    "InFlight",
    "InvalidTransition",
    "LifecycleError",
    "NotAComponent",
    "Refused",
    "ShutdownPlan",
    "StartupError",
    "TCPServer",
    "ThreadedRunner",
    "Ticket",
    "UnknownDependency",
    "WSGIMiddleware",
    "WSGIServer",
    "cancel_scope",
    "current_token",
    "mark_long_lived",
    "run",
    "use_token",
]
