"""Scripts run as real child processes by the signal and embedding tests.

They run as modules (``python -m tests.procs.app_child``, from the
repository's root), so that they share what is below.
"""

from __future__ import annotations

import sys
from typing import Any

import structlog


def log_json_lines() -> Any:
    """Every structlog event, the library's too, as one JSON line on stdout; the child's logger."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("child")
