"""What the in-process rows of the serving benchmarks share: measuring in fresh processes.

One process's hash seed and memory layout move a sub-microsecond reading for
the same code, so such rows are measured in several fresh processes and the
median is taken.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def in_children(module: str, args: list[str], processes: int) -> list[Any]:
    """Run ``python -m module *args`` ``processes`` times; each one's last stdout line, as JSON."""
    runs = []
    for _ in range(processes):
        out = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=600,
        )
        runs.append(json.loads(out.stdout.decode().strip().splitlines()[-1]))
    return runs
