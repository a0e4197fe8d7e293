"""Run many short train.py runs side by side and tabulate where each one's loss drops.

    python3 -m scripts.sweep --out results/sweep --time-limit 180 --seeds 0 1 \
        --variant "b64: train.batch_size=64" --variant "lr2e-3: train.lr=2e-3"
    python3 -m scripts.sweep --out results/seeds --seeds 100 101 102 103   # seeds of one config
    python3 -m scripts.sweep --out results/seeds --seeds 100 101 102 103 --resume  # after a stop

Each variant is a name and space-separated overrides of `--base` (default configs/train_tiny.yaml);
every (variant, seed) is one train.py process writing into OUT/<name>_s<seed>/, `--parallel` at a
time (default: one per CPU core) with `--threads` torch threads each (default 1). A run still
going `--time-limit` seconds after its own start is stopped with SIGTERM, so that train.py saves a
checkpoint, its summary and loss.png (SIGKILL only if it is still there a minute later); with
`--stop-after-drop K`, so is a run whose loss has stayed below plateau / 3 (train.py's detector:
the drop has ended) for K steps, and with `--prune-at F` one whose L_mask is not 2× below its
plateau by F of its steps. Writes OUT/sweep.json and OUT/sweep.md (one row per run: the drop as
detect_drop reads it), then scripts/compare_runs.py's table of every run into OUT/compare
(runs.md: which fraction completes, L_mask `--below` times under the plateau).

Every run's config is loaded and checked before any process starts. An OUT that holds an earlier
sweep is refused, unless `--resume`: then every run continues from its checkpoint
(`--train.resume=true`; a run without one starts at step 0), its log.txt is appended to, and the
tables are made again from all the runs. A run that fails is named with the last line of its
log.txt, and the sweep then exits with an error. Machines with W&B access can use the sweep files
in configs/sweeps/ instead.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from outcomes import BELOW, compare
from trainer import TrainConfig
from utils.config import (
    REPO_ROOT,
    ToolParser,
    UserError,
    load_config,
    number,
    repo_relative,
    resolve_path,
    run_script,
)
from utils.drop import describe_drop, detect_drop
from utils.files import make_dir, write_json
from utils.processes import side_by_side
from utils.results import markdown_table
from utils.runs import read_metrics

DROP_CHECK_S = 30  # how often a watched run's log is read for its drop
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")  # a variant's name: a folder name
OUTPUTS = ("sweep.json", "sweep.md", "compare")  # what a sweep writes beside its runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ToolParser(prog="scripts.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--base", default="configs/train_tiny.yaml", help="config every variant edits")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--variant", action="append", default=[], help="'name: key=value key=value'")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values")
    p.add_argument(
        "--time-limit",
        type=number(float, above=0),
        default=300,
        help="seconds before a run is stopped",
    )
    p.add_argument(
        "--stop-after-drop",
        type=number(int, at_least=1),
        default=None,
        help="stop a run this many steps after its drop has ended (default: never)",
    )
    p.add_argument(
        "--prune-at",
        type=number(float, above=0, below=1),
        default=None,
        help="stop a run whose L_mask is not 2x below its plateau by this fraction of its "
        "train.steps (successive halving's first rung; default: never)",
    )
    p.add_argument(
        "--parallel",
        type=number(int, at_least=1),
        default=os.cpu_count() or 1,
        help="processes at once (cores)",
    )
    p.add_argument(
        "--below",
        type=number(float, above=1),
        default=BELOW,
        help="compare_runs: L_mask this far under = complete",
    )
    p.add_argument(
        "--threads", type=number(int, at_least=1), default=1, help="torch threads per process"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the runs of an earlier sweep in --out"
    )
    return p.parse_args(argv)


@dataclass
class Job:
    name: str
    seed: int
    run_dir: Path
    cmd: list[str]

    @property
    def log(self) -> Path:
        return self.run_dir / "log.txt"


def plan(args: argparse.Namespace, out: Path) -> list[Job]:
    """One job per (variant, seed), each config loaded and checked: a bad variant stops the
    sweep before any process starts, with the variant named."""
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds repeats a seed ({' '.join(map(str, args.seeds))})")
    base = resolve_path(args.base)
    if not base.is_file():
        raise UserError(f"--base {args.base}: no such config file")
    jobs, names = [], set()
    for spec in args.variant or ["base:"]:
        name, colon, overrides = spec.partition(":")
        name = name.strip()
        if not colon or not NAME.match(name):
            raise UserError(
                f"--variant {spec!r}: expected 'name: key=value ...' with a name of letters, "
                "digits and . _ + = - (it names the run folders)"
            )
        if name in names:
            raise UserError(f"--variant name '{name}' is given twice")
        names.add(name)
        for seed in args.seeds:
            run_dir = out / f"{name}_s{seed}"
            folder = repo_relative(run_dir)  # inside the repo, logs and configs name no machine
            settings = [*overrides.split(), f"train.seed={seed}", f"train.out_dir={folder}"]
            settings += ["train.save_steps=[]"] + (["train.resume=true"] if args.resume else [])
            try:
                load_config(TrainConfig, base, settings)
            except UserError as e:
                raise UserError(f"--variant {name}: {e}") from None
            cmd = [sys.executable, "train.py", "--config", str(repo_relative(base))]  # from root
            jobs.append(Job(name, seed, run_dir, cmd + [f"--{o}" for o in settings]))
    return jobs


def check_out(out: Path, jobs: list[Job], resume: bool) -> None:
    """An OUT holding an earlier sweep (its tables, or a folder one of these runs would use) is
    refused without --resume: nothing in it is touched."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if resume:
        return
    taken = [p.name for p in (out / o for o in OUTPUTS) if p.exists()]
    taken += [j.run_dir.name for j in jobs if j.run_dir.exists() and any(j.run_dir.iterdir())]
    if taken:
        raise UserError(
            f"--out {out} already holds a sweep ({', '.join(taken[:3])}"
            f"{' ...' if len(taken) > 3 else ''}); choose another folder or pass --resume "
            "(nothing was changed)"
        )


def row(job: Job, finished: bool) -> dict:
    records = read_metrics(job.run_dir / "metrics.jsonl")
    drop = detect_drop([r["step"] for r in records], [r["loss"] for r in records])
    last = records[-1] if records else {}
    drop_time = None
    if drop["drop_step"] is not None:
        drop_time = next(r["time"] for r in records if r["step"] == drop["drop_step"])
    return {
        "variant": job.name,
        "seed": job.seed,
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
    found = compare(records)
    return found["ratio"] is None or found["ratio"] < ratio


def completed_for(run_dir: Path) -> int | None:
    """Steps logged since the drop ended (train.py's detector), or None before a drop."""
    records = read_metrics(run_dir / "metrics.jsonl")
    drop = detect_drop([r["step"] for r in records], [r["loss"] for r in records])
    if drop["drop_end_step"] is None:
        return None
    return records[-1]["step"] - drop["drop_end_step"]


def last_line(path: Path) -> str:
    """The last non-empty line of a log (a progress bar's carriage returns split lines too)."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return lines[-1] if lines else "(empty log)"


def run_jobs(args: argparse.Namespace, jobs: list[Job]) -> tuple[list[dict], list[str]]:
    """Run the jobs `--parallel` at a time; (one row per run, a line per failed run)."""
    watching = args.stop_after_drop is not None or args.prune_at is not None
    checked: dict[Path, float] = {}  # a run's log is read every DROP_CHECK_S, not every poll

    def stop(job: Job, elapsed_s: float) -> bool:
        if elapsed_s > args.time_limit:
            return True
        if not watching or elapsed_s - checked.get(job.log, 0.0) < DROP_CHECK_S:
            return False
        checked[job.log] = elapsed_s
        if args.stop_after_drop is not None:
            done = completed_for(job.run_dir)
            if done is not None and done >= args.stop_after_drop:
                return True
        return args.prune_at is not None and pruned(job.run_dir, args.prune_at)

    rows, failed = [], []
    ended = side_by_side(
        jobs, args.parallel, args.threads, cwd=REPO_ROOT, append=args.resume, stop=stop
    )
    for end in ended:
        job = end.job
        # A run we stopped exits 130 after saving: not a failure.
        if end.returncode != 0 and not (end.stopped and end.returncode == 130):
            failed.append(f"{job.run_dir.name}: {last_line(job.log)}")
        rows.append(row(job, finished=end.returncode == 0))
    return rows, failed


def main(argv: list[str]) -> list[dict]:
    args = parse_args(argv)
    out = resolve_path(args.out).resolve()
    jobs = plan(args, out)
    check_out(out, jobs, args.resume)
    make_dir(out, "--out")
    rows, failed = run_jobs(args, jobs)
    rows.sort(key=lambda r: (r["variant"], r["seed"]))
    write_json(out / "sweep.json", rows)
    cols = ["variant", "seed", "last_step", "plateau_loss", "drop_step", "drop_end_step"]
    table = markdown_table(rows, cols + ["drop", "final_loss_mask", "steps_per_s"])
    (out / "sweep.md").write_text(table)
    print(table)
    logged = [j.run_dir for j in jobs if read_metrics(j.run_dir / "metrics.jsonl")]
    # inside the repo, named from its root: compare's summary.json names no machine's folders
    logged = [repo_relative(p) for p in logged]
    if logged:
        tool = [sys.executable, "-m", "scripts.compare_runs", "--below", str(args.below)]
        tool += ["--replace"] if args.resume else []  # a resumed sweep remakes its own table
        subprocess.run([*tool, str(out / "compare"), *map(str, logged)], cwd=REPO_ROOT)
    if failed:
        raise UserError(
            f"{len(failed)} of {len(jobs)} runs failed (their log.txt in {out}): "
            + "; ".join(failed)
        )
    return rows


if __name__ == "__main__":
    run_script(main)
