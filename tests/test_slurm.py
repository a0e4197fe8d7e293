"""scripts/slurm_sweep.py: a sweep's grid as a SLURM array whose tasks save at the time limit,
requeue and resume. Run here without SLURM: `scontrol` is a stand-in that records its call."""

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, TINY

from utils.runs import checkpoints, read_metrics

SWEEP = ROOT / "configs/sweeps/tiny_grid.yaml"


def make(tmp_path, *extra: str):
    cmd = [sys.executable, "-m", "scripts.slurm_sweep", str(SWEEP), str(tmp_path / "job")]
    done = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return tmp_path / "job"


def test_one_task_per_grid_point_each_resuming(tmp_path):
    """Catches an array whose size is not the grid's (tasks lost or run twice), a command that
    would start afresh when requeued (no --train.resume=true), and a script without the time
    limit signal or the requeue."""
    job = make(tmp_path, "--time", "01:00:00", "--gpus", "0", "--set", "train.device=cpu")
    lines = (job / "commands.txt").read_text().splitlines()
    assert len(lines) == 4 * 2 * 2  # seeds × batch sizes × widths in tiny_grid.yaml
    assert len(set(lines)) == len(lines)
    assert all("--train.resume=true" in x and x.endswith("--train.device=cpu") for x in lines)
    script = (job / "sweep.sbatch").read_text()
    for needle in ("--array=0-15", "--requeue", "--signal=B:TERM@120", "--time=01:00:00"):
        assert needle in script
    assert "--gres" not in script and "scontrol requeue" in script


def test_a_task_at_its_time_limit_saves_requeues_and_resumes(tmp_path):
    """Catches a task killed with its run (no checkpoint to resume from), a task that is not
    requeued, and a requeued task that starts again at step 0."""
    shrink = [f"train.{o}" for o in ("steps=100000", "log_every=5", "save_every=0")]
    shrink += [o for o in TINY if o.startswith(("model.", "data.", "train.batch_size"))]
    shrink += [f"train.out_dir={tmp_path}/runs/{{overrides}}"]
    job = make(tmp_path, "--gpus", "0", *[x for o in shrink for x in ("--set", o)])
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    (fake / "scontrol").chmod(0o755)
    path = os.pathsep.join([str(fake), os.path.dirname(sys.executable), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "WANDB_MODE": "disabled"}
    env.update(SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="42")

    def logs() -> int:
        runs = list((tmp_path / "runs").glob("*"))
        return len(read_metrics(runs[0] / "metrics.jsonl")) if runs else 0

    def task_until(records: int) -> tuple[int, str]:
        """Run the task until the run has logged `records`, then SIGTERM it as SLURM would."""
        cmd = ["bash", str(job / "sweep.sbatch")]
        task = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while logs() < records and time.time() < deadline and task.poll() is None:
            time.sleep(0.5)
        task.send_signal(signal.SIGTERM)
        out, _ = task.communicate(timeout=120)
        return task.returncode, out.decode()

    code, out = task_until(3)
    assert code == 0, out[-2000:]
    (run,) = list((tmp_path / "runs").glob("*"))
    saved = max(checkpoints(run, exported=False))
    assert saved >= 15 and (run / "summary.json").is_file()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "42_0"]
    code, out = task_until(logs() + 2)  # the requeued task
    assert f"resuming from step {saved}" in out, out[-2000:]
