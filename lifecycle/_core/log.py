"""The library's one logger: structlog once the application configured it, else stdlib logging.

Every module of the package logs through `get_logger`; nothing else of it
touches structlog or ``logging`` to emit. The library configures nothing
global: the application decides where events go.

* structlog configured (``structlog.is_configured()``, checked on every
  call: an attribute read): each event goes to structlog's logger
  ``"lifecycle"`` with its fields, rendered by the application's processors.
* structlog not configured: each event is a stdlib record on the
  ``logging.getLogger("lifecycle")`` logger, at the same level, so that
  levels, handlers, filters and ``logging.basicConfig`` work as Python users
  expect. The message reads ``event key=value ...`` (multi-line values such
  as a stack, and a mapping of mappings such as the shutdown summary's
  components, one line per entry, follow on lines of their own); the fields are attributes of the
  record (those whose names the record does not use itself) and, all of them,
  the dict ``record.fields``; ``record.event`` is the event's name;
  ``exc_info`` is the record's.

Logging never breaks the lifecycle. A log call that raises — a processor,
a filter or a formatter of the application's that fails — is swallowed: the
first such failure in the process is written as one line to stderr, later
ones are silent, and the caller carries on (a transition that could not be
logged still happens, a stop is still called).

Example::

    _log = get_logger()
    _log.info("transition", component="db", from_state="RUNNING", to_state="STOPPING")
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final

import structlog

__all__ = ["NAME", "Logger", "get_logger"]

NAME: Final = "lifecycle"
"""The name of the library's logger, in structlog and in stdlib ``logging``."""

# What a LogRecord holds itself: a field of that name stays in ``record.fields`` only.
_RECORD_ATTRIBUTES: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "event",
    "fields",
}

# Logger.<method> -> the stdlib level (``exception`` is ERROR with the handled exception).
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The frames between the library's call site and ``logging.Logger.log``:
# Logger.<method>, Logger._log. Records then name the call site's file and line.
_STACKLEVEL: Final = 3


class _Failures:
    """Whether a log call has failed in this process yet (only the first is reported)."""

    reported = False


def _report_failure(event: str, error: BaseException) -> None:
    if _Failures.reported:
        return
    _Failures.reported = True
    stream = sys.stderr or sys.__stderr__
    if stream is None:
        return
    try:
        stream.write(
            f"lifecycle: logging the event {event!r} raised {type(error).__name__}: {error}; "
            f"the lifecycle carries on without it (later logging errors are not reported; "
            f"check the structlog processors or logging handlers of the application)\n"
        )
        stream.flush()
    except Exception:  # noqa: BLE001, S110 - stderr itself is gone: nothing left to tell
        pass


def _value(value: object) -> str:
    """One value of ``key=value``: bare when it is one plain word, else its repr.

    A value whose ``repr`` raises is shown as a placeholder: one odd field
    never costs the whole event.
    """
    if isinstance(value, str) and value and not any(c in value for c in " \t\r\n\"'="):
        return value
    if isinstance(value, float | int | bool) or value is None:
        return str(value)
    try:
        shown = repr(value)
    except Exception:  # noqa: BLE001 - see above
        return f"<{type(value).__name__}: repr() failed>"
    return shown if isinstance(shown, str) else f"<{type(value).__name__}>"


def render(event: str, fields: Mapping[str, object]) -> str:
    """The stdlib message of an event: ``event key=value ...``, multi-line values last.

    Example::

        >>> render("transition", {"component": "db", "duration": 0.01})
        'transition component=db duration=0.01'
        >>> table = {"db": {"state": "stopped"}}
        >>> print(render("shutdown summary", {"exit_code": 0, "components": table}))
        shutdown summary exit_code=0
        components:
          db: state=stopped
    """
    inline = [event]
    blocks = []
    for key, value in fields.items():
        if isinstance(value, str) and "\n" in value:
            blocks.append(f"{key}:\n{value.rstrip()}")
        elif isinstance(value, Mapping) and _is_table(value):
            rows = (
                f"  {name}: " + " ".join(f"{k}={_value(v)}" for k, v in row.items())
                for name, row in value.items()
            )
            blocks.append(f"{key}:\n" + "\n".join(rows))
        else:
            inline.append(f"{key}={_value(value)}")
    return "\n".join([" ".join(inline), *blocks])


def _is_table(value: Mapping[Any, Any]) -> bool:
    """A non-empty mapping of mappings (the summary's components): one line per entry."""
    return bool(value) and all(isinstance(row, Mapping) for row in value.values())


class Logger:
    """The library's logger (see the module's docstring); get it from `get_logger`.

    Its methods take an event name and fields, as structlog's do, and never
    raise. ``exc_info`` (True, an exception, or a ``sys.exc_info()`` tuple)
    and, under stdlib logging, ``stack_info`` are honoured.
    """

    __slots__ = ("_std", "_struct")

    def __init__(self, name: str = NAME) -> None:
        self._struct: Any = structlog.get_logger(name)
        self._std = logging.getLogger(name)

    def debug(self, event: str, **fields: Any) -> None:
        """Log ``event`` at DEBUG."""
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log ``event`` at INFO."""
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log ``event`` at WARNING."""
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR."""
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log ``event`` at ERROR with the exception being handled."""
        fields.setdefault("exc_info", True)
        self._log("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        """Log ``event`` at CRITICAL."""
        self._log("critical", event, fields)

    def enabled(self, method: str) -> bool:
        """Whether an event of ``method``'s level may be emitted; False only when it never is.

        Under stdlib logging, the ``lifecycle`` logger's ``isEnabledFor``.
        Under structlog, the ``is_enabled_for`` of the configured wrapper
        class: a filtering bound logger's level
        (``structlog.make_filtering_bound_logger``; the default wrapper is
        one at NOTSET), ``structlog.stdlib.BoundLogger``'s stdlib logger;
        a wrapper class without one, or a check that fails, counts as
        enabled: its processors decide. What a caller checks
        before building an event's fields, so that a level that is off
        costs no more than the check.

        Example::

            >>> get_logger().enabled("critical")
            True
        """
        try:
            if structlog.is_configured():
                bound = self._struct.bind()
                # A method of the wrapper class itself: a generic BoundLogger's
                # __getattr__ would turn the name into a log call of its logger.
                check = getattr(type(bound), "is_enabled_for", None)
                return True if check is None else bool(check(bound, _LEVELS[method]))
            return self._std.isEnabledFor(_LEVELS[method])
        except Exception:  # noqa: BLE001 - unsure: let the event through (never breaks)
            return True

    def emit_all(self, events: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Log each ``(method, event, fields)`` in order, as the methods above do one by one.

        Under structlog the logger is bound once for them all (a structlog
        configured with ``cache_logger_on_first_use=False`` otherwise binds
        a new one per event); each event still goes through the processors
        of the configuration in force. A failing event is swallowed like any.

        Example::

            get_logger().emit_all([("debug", "transition", {"component": "db"})])
        """
        bound: Any = None
        try:
            if structlog.is_configured():
                bound = self._struct.bind()
        except Exception as error:  # noqa: BLE001 - logging never breaks the lifecycle
            _report_failure("(binding the logger)", error)
            return
        for method, event, fields in events:
            if bound is None:
                self._log(method, event, fields)
                continue
            try:
                getattr(bound, method)(event, **fields)
            except Exception as error:  # noqa: BLE001 - logging never breaks the lifecycle
                _report_failure(event, error)

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        try:
            if structlog.is_configured():
                getattr(self._struct, method)(event, **fields)
                return
            level = _LEVELS[method]
            if not self._std.isEnabledFor(level):
                return
            exc_info = fields.pop("exc_info", None)
            stack_info = bool(fields.pop("stack_info", False))
            extra = {k: v for k, v in fields.items() if k not in _RECORD_ATTRIBUTES}
            extra["event"] = event
            extra["fields"] = fields
            self._std.log(
                level,
                render(event, fields),
                exc_info=exc_info,
                stack_info=stack_info,
                extra=extra,
                stacklevel=_STACKLEVEL,
            )
        except Exception as error:  # noqa: BLE001 - logging never breaks the lifecycle
            _report_failure(event, error)


_LOGGERS: dict[str, Logger] = {}


def get_logger(name: str = NAME) -> Logger:
    """The library's `Logger` named ``name`` (one per name).

    Example::

        _log = get_logger()
        _log.warning("signal received", signal="SIGTERM")
    """
    logger = _LOGGERS.get(name)
    if logger is None:
        logger = _LOGGERS.setdefault(name, Logger(name))
    return logger
