"""Commands run side by side, a few at a time, each with its own log file and thread count: the
one job loop under scripts/sweep.py and scripts/claims.py.

    for ended in side_by_side(jobs, parallel=2, threads=1):
        print(ended.job, ended.returncode, ended.stopped)

A job is anything with `cmd` (the command) and `log` (its log file's path). `side_by_side`
starts them in order, at most `parallel` at once, and yields each as it ends. `ready(job)`
says whether a job may start yet (True), must wait (False) or will never run (None: a job it
needed failed; it is yielded at once with `returncode` None); `stop(job, elapsed_s)` asks for a
running job to be stopped (SIGTERM, so that train.py saves a checkpoint; SIGKILL if it is still
there GRACE_S later); `on_start(job)` is called as each starts (a progress line).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import UserError

GRACE_S = 60  # seconds a stopped job has to save before it is killed


@dataclass
class Ended:
    job: Any
    returncode: int | None  # None: never started (ready() said None)
    stopped: bool = False  # stopped on stop()'s request, not ended by itself


def terminate(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM (train.py finishes its step, saves and exits), SIGKILL after grace_s."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def side_by_side(
    jobs: list,
    parallel: int,
    threads: int = 1,
    *,
    cwd: Path | None = None,
    append: bool = True,
    ready: Callable[[Any], bool | None] = lambda job: True,
    stop: Callable[[Any, float], bool] | None = None,
    on_start: Callable[[Any], None] | None = None,
    poll_s: float = 1.0,
) -> Iterator[Ended]:
    """Run `jobs` at most `parallel` at a time with `threads` torch/OpenMP threads each; yield
    each as it ends. A job's output goes to its `log` (appended to, or written afresh when not
    `append`). Leaving the loop early (an exception, a break) stops what is still running."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    pending, running = list(jobs), []
    try:
        while pending or running:
            for job in [j for j in pending if ready(j) is None]:
                pending.remove(job)
                yield Ended(job, None)
            startable = [j for j in pending if ready(j)]
            while startable and len(running) < parallel:
                job = startable.pop(0)
                pending.remove(job)
                Path(job.log).parent.mkdir(parents=True, exist_ok=True)
                log = open(job.log, "a" if append else "w")  # noqa: SIM115  closed when it ends
                proc = subprocess.Popen(
                    job.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd
                )
                running.append((job, proc, log, time.monotonic()))
                if on_start is not None:
                    on_start(job)
            if pending and not running:
                # nothing runs and nothing may start: each waits on a job that ended without
                # what it needed (ready() would have said None had that job failed)
                raise UserError(f"{len(pending)} jobs wait on results no job is making")
            time.sleep(poll_s)
            for entry in list(running):
                job, proc, log, started = entry
                stopped = False
                if proc.poll() is None:
                    if stop is None or not stop(job, time.monotonic() - started):
                        continue
                    terminate(proc)
                    stopped = True
                log.close()
                running.remove(entry)
                yield Ended(job, proc.returncode, stopped)
    finally:
        for _, proc, log, _ in running:
            if proc.poll() is None:
                terminate(proc)
            log.close()
