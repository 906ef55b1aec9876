"""The public face: exactly these names, each documented, nothing private leaking."""

from __future__ import annotations

import enum
import inspect
import subprocess
import sys

import pytest

import lifecycle

# The public submodules imported when first named (the integrations, the timeline, and
# the pytest plugin, which pytest itself loads in every session).
INTEGRATIONS = {"uvicorn", "gunicorn", "grpc", "aiohttp", "redis", "timeline", "testing"}

PUBLIC = {
    "ChildStatus",
    "ProcessesKilled",
    "ProcessGroup",
    "ProcessGroupFailed",
    "ProcessStopTimedOut",
    "AsyncConsumer",
    "AsyncMessageSource",
    "AsyncQueueSource",
    "Consumer",
    "ConsumerStats",
    "Message",
    "MessageSource",
    "QueueSource",
    "Claim",
    "Dedupe",
    "MemoryDedupe",
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
    "DEADLINE_EXCEEDED",
    "DeadlineExceeded",
    "DeadlineTimer",
    "Drain",
    "DependencyFailed",
    "DuplicateComponent",
    "ExitCode",
    "HTTPLimits",
    "HTTPServer",
    "HealthServer",
    "InFlight",
    "InvalidTransition",
    "LifecycleError",
    "NotAComponent",
    "Refused",
    "RestartLimitReached",
    "RestartPolicy",
    "PeriodicWorker",
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
}


def test_all_is_exactly_the_public_api():
    """__all__ lists the public names: none missing, none extra."""
    assert set(lifecycle.__all__) == PUBLIC


def test_every_public_name_is_importable():
    """Every name in __all__ exists on the package."""
    for name in lifecycle.__all__:
        assert hasattr(lifecycle, name), name


def test_no_private_module_leaks():
    """The package's namespace holds no module beyond the _-prefixed rooms and integrations."""
    leaked = {
        name
        for name, value in vars(lifecycle).items()
        if inspect.ismodule(value) and not name.startswith("_")
    }
    assert leaked - INTEGRATIONS == set()


def test_importing_the_package_imports_no_server_package():
    """``import lifecycle`` loads none of the optional servers; naming one loads it."""
    code = (
        "import sys, lifecycle\n"
        "servers = ('uvicorn', 'gunicorn', 'grpc', 'aiohttp', 'redis')\n"
        "print(sorted(m for m in servers if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_an_unknown_attribute_is_an_attribute_error():
    """Only the integrations are looked up lazily; a typo still fails loudly."""
    with pytest.raises(AttributeError, match="no attribute 'uvicron'"):
        _ = lifecycle.uvicron


def test_every_public_callable_has_a_docstring_with_an_example():
    """Classes and functions (not errors, enums, constants) document an example."""
    missing = []
    for name in lifecycle.__all__:
        obj = getattr(lifecycle, name)
        if not callable(obj) or (
            isinstance(obj, type) and issubclass(obj, BaseException | enum.Enum)
        ):
            continue
        doc = inspect.getdoc(obj) or ""
        if "Example" not in doc and ">>>" not in doc:
            missing.append(name)
    assert missing == []
