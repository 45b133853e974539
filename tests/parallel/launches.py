"""Stopping a launched server (`ditserve serve`, torchrun) with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_session(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group `proc` leads (it was started with `start_new_session=True`); SIGKILL it if it
    has not exited after `grace_s`."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
