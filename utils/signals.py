"""Ctrl-C and SIGTERM as a request to stop after the current step (train.py saves, then
raises Interrupted, whose message says how to resume)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from utils.config import UserError


class Interrupted(UserError):
    """Ctrl-C or SIGTERM stopped the run after a checkpoint; the message says how to resume."""

    exit_code = 130


@contextlib.contextmanager
def stop_requests() -> Iterator[dict]:
    """While inside, SIGINT (Ctrl-C) and SIGTERM set `flag["signal"]` instead of killing the
    process, so the loop can finish its step and save; a second one stops at once."""
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set from the main thread
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if flag["signal"] is not None:  # asked twice: stop now
            signal.signal(signum, old[signum])
            signal.raise_signal(signum)
            return
        flag["signal"] = signal.Signals(signum).name
        # os.write, not print: a handler may interrupt a write to the same stream
        os.write(
            2, f"\n{flag['signal']}: finishing this step and saving (again to stop now)\n".encode()
        )

    for sig in old:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
