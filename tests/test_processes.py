"""utils/processes.py: the one job loop under scripts/sweep.py and scripts/claims.py."""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from utils.config import UserError
from utils.processes import side_by_side


@dataclass
class Job:
    name: str
    cmd: list[str]
    log: Path


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def spans(jobs: list[Job]) -> list[tuple[float, float]]:
    """(start, end) each job printed as its first and last line."""
    out = []
    for job in jobs:
        lines = job.log.read_text().split()
        out.append((float(lines[0]), float(lines[-1])))
    return out


TIMED = "import time; print(time.time(), flush=True); time.sleep(0.4); print(time.time())"


def test_never_more_than_parallel_at_once_and_each_with_its_thread_count(tmp_path):
    """Catches a loop that starts every job at once (two cores oversubscribed slowed a step 15×
    here) and a job that inherits all the cores' threads instead of `threads`."""
    jobs = [Job(f"j{i}", python(TIMED), tmp_path / f"j{i}.log") for i in range(5)]
    ended = list(side_by_side(jobs, parallel=2, threads=1, poll_s=0.02))
    assert sorted(e.job.name for e in ended) == [j.name for j in jobs]
    assert all(e.returncode == 0 and not e.stopped for e in ended)
    times = spans(jobs)
    for start, _ in times:
        assert sum(s <= start < e for s, e in times) <= 2  # jobs running when this one started
    assert max(e for _, e in times) - min(s for s, _ in times) >= 3 * 0.4  # not all at once

    probe = Job("env", python("import os; print(os.environ['OMP_NUM_THREADS'])"), tmp_path / "e")
    list(side_by_side([probe], parallel=1, threads=3, poll_s=0.02))
    assert probe.log.read_text().strip() == "3"


def test_a_job_waits_for_what_it_needs_and_is_dropped_when_that_failed(tmp_path):
    """Catches an analysis started before its base run's results exist, and one started (or
    waited on forever) after its base run failed."""
    marker = tmp_path / "base_done"
    base = Job("base", python(f"import time; time.sleep(0.3); open({str(marker)!r}, 'w')"),
               tmp_path / "base.log")  # fmt: skip
    after = Job("after", python(f"import os; print(os.path.exists({str(marker)!r}))"),
                tmp_path / "after.log")  # fmt: skip
    broken = Job("broken", python("raise SystemExit(3)"), tmp_path / "broken.log")
    orphan = Job("orphan", python("print('ran')"), tmp_path / "orphan.log")
    failed = set()

    def ready(job):
        if job is after:
            return marker.exists()
        if job is orphan:
            return None if "broken" in failed else False
        return True

    ended = []
    for e in side_by_side([after, orphan, base, broken], parallel=2, ready=ready, poll_s=0.02):
        ended.append(e)
        if e.returncode:
            failed.add(e.job.name)
    codes = {e.job.name: e.returncode for e in ended}
    assert codes == {"base": 0, "broken": 3, "after": 0, "orphan": None}
    assert after.log.read_text().strip() == "True"
    assert not orphan.log.exists()


def test_waiting_on_nothing_is_one_line_not_a_hang(tmp_path):
    """Catches a loop that spins forever when a job's prerequisite ended without its results."""
    job = Job("never", python("print(1)"), tmp_path / "never.log")
    with pytest.raises(UserError, match="1 jobs wait on results no job is making"):
        list(side_by_side([job], parallel=1, ready=lambda j: False, poll_s=0.02))


def test_stop_terminates_a_running_job_and_says_so(tmp_path):
    """Catches a time limit that is never enforced (a sweep that runs past its budget) and a
    stopped job reported as one that ended by itself."""
    slow = Job("slow", python("import time; time.sleep(30)"), tmp_path / "slow.log")
    quick = Job("quick", python("print('ok')"), tmp_path / "quick.log")
    start = time.monotonic()
    ended = {
        e.job.name: e
        for e in side_by_side(
            [slow, quick], parallel=2, stop=lambda job, s: job is slow and s > 0.3, poll_s=0.02
        )
    }
    assert time.monotonic() - start < 10
    assert ended["slow"].stopped and ended["slow"].returncode != 0
    assert not ended["quick"].stopped and ended["quick"].returncode == 0


def test_logs_append_on_resume_and_start_afresh_otherwise(tmp_path):
    """Catches a resumed run whose earlier log is overwritten, and a fresh sweep that appends
    to a stale log."""
    job = Job("j", python("print('second')"), tmp_path / "j.log")
    job.log.write_text("first\n")
    list(side_by_side([job], parallel=1, append=True, poll_s=0.02))
    assert job.log.read_text() == "first\nsecond\n"
    list(side_by_side([job], parallel=1, append=False, poll_s=0.02))
    assert job.log.read_text() == "second\n"


def test_leaving_the_loop_early_stops_what_still_runs(tmp_path):
    """Catches orphaned training processes that keep two cores busy after the runner failed."""
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    slow = Job("slow", python(code), tmp_path / "slow.log")
    fail = Job("fail", python("import time; time.sleep(0.5); raise SystemExit(1)"), tmp_path / "f")
    start = time.monotonic()
    for _ in side_by_side([slow, fail], parallel=2, poll_s=0.02):
        break  # the caller gives up on the first job that ends
    assert time.monotonic() - start < 30
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
