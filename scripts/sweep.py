"""Run many short train.py runs side by side and tabulate where each one's loss drops.

    python3 -m scripts.sweep --out results/sweep --time-limit 180 --seeds 0 1 \
        --variant "b64: train.batch_size=64" --variant "lr2e-3: train.lr=2e-3"
    python3 -m scripts.sweep --out results/seeds --seeds 100 101 102 103   # seeds of one config

Each variant is a name and space-separated overrides of `--base` (default configs/train_tiny.yaml);
every (variant, seed) is one train.py process writing into OUT/<name>_s<seed>/, `--parallel` at a
time (default: one per CPU core) with `--threads` torch threads each (default 1). A run still
going `--time-limit` seconds after its own start is stopped with SIGTERM, so that train.py saves a
checkpoint, its summary and loss.png (SIGKILL only if it is still there a minute later); with
`--stop-after-drop K`, so is a run whose loss has stayed below plateau / 3 (train.py's detector:
the drop has ended) for K steps. Writes OUT/sweep.json and OUT/sweep.md (one row per run: the
drop as detect_drop reads it), then scripts/compare_runs.py's table of every run into
OUT/compare (runs.md: which fraction completes, L_mask `--below` times under the plateau).
Machines with W&B access can use the sweep files in configs/sweeps/ instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from scripts.compare_runs import compare
from utils.config import REPO_ROOT
from utils.drop import describe_drop, detect_drop
from utils.files import write_json
from utils.results import markdown_table
from utils.runs import read_metrics


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="configs/train_tiny.yaml", help="config every variant edits")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--variant", action="append", default=[], help="'name: key=value key=value'")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values")
    p.add_argument("--time-limit", type=float, default=300, help="seconds before a run is stopped")
    p.add_argument(
        "--stop-after-drop",
        type=int,
        default=None,
        help="stop a run this many steps after its drop has ended (default: never)",
    )
    p.add_argument(
        "--prune-at",
        type=float,
        default=None,
        help="stop a run whose L_mask is not 2x below its plateau by this fraction of its "
        "train.steps (successive halving's first rung; default: never)",
    )
    p.add_argument(
        "--parallel", type=int, default=os.cpu_count() or 1, help="processes at once (cores)"
    )
    p.add_argument(
        "--below", type=float, default=8.0, help="compare_runs: L_mask this far under = complete"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return p.parse_args(argv)


def row(name: str, seed: int, run_dir: Path, finished: bool) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    drop = detect_drop([r["step"] for r in records], [r["loss"] for r in records])
    last = records[-1] if records else {}
    drop_time = None
    if drop["drop_step"] is not None:
        drop_time = next(r["time"] for r in records if r["step"] == drop["drop_step"])
    return {
        "variant": name,
        "seed": seed,
        "finished": finished,
        "last_step": last.get("step"),
        **drop,
        "drop": describe_drop(drop),
        "drop_time_s": drop_time,
        "final_loss": last.get("loss"),
        "final_loss_mask": last.get("loss_mask"),
        "steps_per_s": last.get("steps_per_s"),
    }


def pruned(run_dir: Path, fraction: float, ratio: float = 2.0) -> bool:
    """Past `fraction` of its train.steps with L_mask not yet `ratio` times below its plateau
    (compare_runs' plateau and final L_mask): no drop, or too small a one, to complete. A
    partial drop that has already halved L_mask is kept (a first version pruned every run
    without a sudden drop, partial ones too)."""
    records = read_metrics(run_dir / "metrics.jsonl")
    config = run_dir / "config.yaml"
    if not records or not config.is_file():
        return False
    steps = yaml.safe_load(config.read_text())["train"]["steps"]
    if records[-1]["step"] < fraction * steps:
        return False
    row = compare(records)
    return row["ratio"] is None or row["ratio"] < ratio


def completed_for(run_dir: Path) -> int | None:
    """Steps logged since the drop ended (train.py's detector), or None before a drop."""
    records = read_metrics(run_dir / "metrics.jsonl")
    drop = detect_drop([r["step"] for r in records], [r["loss"] for r in records])
    if drop["drop_end_step"] is None:
        return None
    return records[-1]["step"] - drop["drop_end_step"]


GRACE_S = 60  # seconds a stopped run has to save before it is killed


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (train.py finishes its step, saves and exits), SIGKILL after GRACE_S."""
    proc.terminate()
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for spec in args.variant or ["base:"]:
        name, _, overrides = spec.partition(":")
        for seed in args.seeds:
            run_dir = out / f"{name.strip()}_s{seed}"
            cmd = [
                sys.executable,
                str(REPO_ROOT / "train.py"),
                "--config",
                str(REPO_ROOT / args.base),
            ]
            cmd += [f"--{o}" for o in overrides.split()]
            cmd += [f"--train.seed={seed}", f"--train.out_dir={run_dir}", "--train.save_steps=[]"]
            jobs.append((name.strip(), seed, run_dir, cmd))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    pending, running, rows = list(jobs), [], []
    checked = time.time()
    while pending or running:
        while pending and len(running) < args.parallel:
            name, seed, run_dir, cmd = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "log.txt", "w")  # noqa: SIM115  closed when the process ends
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((name, seed, run_dir, proc, log, time.time()))
        time.sleep(1)
        watching = args.stop_after_drop is not None or args.prune_at is not None
        check_drop = watching and time.time() - checked > 30
        checked = time.time() if check_drop else checked
        for job in list(running):
            name, seed, run_dir, proc, log, started = job
            over = time.time() - started > args.time_limit
            if check_drop and not over and proc.poll() is None and args.stop_after_drop:
                done = completed_for(run_dir)
                over = done is not None and done >= args.stop_after_drop
            if check_drop and not over and proc.poll() is None and args.prune_at is not None:
                over = pruned(run_dir, args.prune_at)
            if proc.poll() is None and not over:
                continue
            if proc.poll() is None:
                stop(proc)
            log.close()
            running.remove(job)
            rows.append(row(name, seed, run_dir, finished=proc.returncode == 0))
    rows.sort(key=lambda r: (r["variant"], r["seed"]))
    write_json(out / "sweep.json", rows)
    cols = ["variant", "seed", "last_step", "plateau_loss", "drop_step", "drop_end_step"]
    table = markdown_table(rows, cols + ["drop", "final_loss_mask", "steps_per_s"])
    (out / "sweep.md").write_text(table)
    print(table)
    logged = [d for _, _, d, _ in jobs if read_metrics(d / "metrics.jsonl")]
    if logged:
        compare = [sys.executable, "-m", "scripts.compare_runs", "--below"]
        subprocess.run(
            [*compare, str(args.below), str(out / "compare"), *map(str, logged)], cwd=REPO_ROOT
        )
    return rows


if __name__ == "__main__":
    main(parse_args())
