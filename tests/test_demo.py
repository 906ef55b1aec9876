"""`python -m lifecycle demo`: the README's first command works and shows the difference."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.process
def test_demo_shows_naive_loss_and_managed_zero():
    """The demo runs both servers under load; the managed one loses nothing and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "demo"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        line.split()[0]: line.split()
        for line in done.stdout.splitlines()
        if line[:7] in ("naive  ", "managed")
    }
    naive, managed = rows["naive"], rows["managed"]
    # columns: server sent ok lost refused shutdown exit ...
    assert int(naive[3]) > 0, done.stdout
    assert int(managed[3]) == 0, done.stdout
    assert managed[6] == "0", done.stdout
    assert '"shutdown_reason": "signal SIGTERM"' in done.stdout
