"""A W&B sweep file's grid as a SLURM job array that survives time limits and requeues.

    python3 -m scripts.slurm_sweep configs/sweeps/paper_seeds.yaml OUT_DIR \
        [--time 04:00:00] [--gpus 1] [--cpus 8] [--partition NAME] [--set KEY=VALUE ...]
    sbatch OUT_DIR/sweep.sbatch

Writes OUT_DIR/commands.txt (one train.py command per grid point, expanded as a W&B agent would:
the sweep file's `command` with each run's values as `--key=value`; `--set` appends an override to
every one, e.g. `--set train.device=cuda`) and OUT_DIR/sweep.sbatch, an array job with one task
per command. SLURM sends SIGTERM two minutes before the time limit (`--signal=B:TERM@120`); the
task passes it to train.py, which finishes its step and saves a checkpoint and summary, then asks
SLURM to requeue the task (`scontrol requeue`); the requeued task runs the same command, whose
`--train.resume=true` continues from that checkpoint (the same W&B run: train.py keeps its id).
Logs go to OUT_DIR/logs/. Nothing here needs W&B access: runs log offline without credentials.
Every task's train.py config is loaded and checked first; an OUT_DIR that already holds a job is
refused (tasks of that job still queued would read the new lines).
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
from pathlib import Path

import yaml

from trainer import TrainConfig
from utils.config import (
    REPO_ROOT,
    ToolParser,
    UserError,
    load_config,
    number,
    resolve_path,
    run_script,
    split_argv,
)
from utils.files import atomic_write_text, make_dir

TEMPLATE = """#!/usr/bin/env bash
#SBATCH --job-name={name}
#SBATCH --array=0-{last}
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output={logs}/%A_%a.out
{resources}
# One task per line of commands.txt (scripts/slurm_sweep.py made this file from {sweep}).
set -u
cd {root}
line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {commands})
eval "set -- $line"  # the words of this task's command, quoted as commands.txt quotes them
"$@" &  # train.py itself is the child: the signal below reaches it
child=$!
task="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
# At the time limit: let train.py save (it exits 130), then requeue this task to resume.
trap 'kill -TERM "$child"; wait "$child"; scontrol requeue "$task"; exit 0' TERM
wait "$child"
"""


def _parameters(spec: dict, path: Path) -> tuple[list[str], list[list]]:
    """The grid's parameter names and each one's values (W&B's `values: [...]` or `value: x`)."""
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{path}: 'parameters' must map each parameter to its values")
    names, grids = list(params), []
    for name in names:
        entry = params[name]
        if isinstance(entry, dict) and "values" in entry:
            values = entry["values"]
            if not isinstance(values, list) or not values:
                raise UserError(f"{path}: parameter '{name}': 'values' must be a non-empty list")
        elif isinstance(entry, dict) and "value" in entry:
            values = [entry["value"]]
        else:
            raise UserError(f"{path}: parameter '{name}' needs 'values: [...]' or 'value: x'")
        grids.append(values)
    return names, grids


def grid_commands(path: Path, extra: list[str] = ()) -> list[list[str]]:
    """The command lines a W&B agent runs for a grid sweep file: its `command` with ${env}
    dropped, ${program} the program and ${args} the run's values as --key=value (W&B's form),
    then `extra` overrides."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read the sweep file {path} ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or spec.get("method") != "grid":
        raise UserError(f"{path}: only grid sweeps (method: grid) expand into a job array")
    names, grids = _parameters(spec, path)
    command, program = spec.get("command"), spec.get("program")
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise UserError(f"{path}: 'command' must be a list of words (W&B's sweep command)")
    if "${program}" in command and not isinstance(program, str):
        raise UserError(f"{path}: 'command' uses ${{program}} but 'program' is not set")
    commands = []
    for values in itertools.product(*grids):
        cmd = []
        for part in command:
            if part == "${env}":
                continue
            if part == "${args}":
                cmd += [f"--{k}={v}" for k, v in zip(names, values)]
            else:
                cmd.append(part.replace("${program}", program or ""))
        commands.append(cmd + [f"--{o}" for o in extra])
    return commands


def check_command(cmd: list[str]) -> None:
    """A train.py command's config and overrides, loaded as train.py will load them: a key the
    config lacks or a bad value stops here, not in a queued task hours later."""
    words = [w for w in cmd if w.startswith("--")]
    script = next((w for w in cmd if w.endswith(".py")), "")
    if Path(script).name != "train.py":
        return  # another program: its own checks apply
    try:
        config, overrides = split_argv(words, "configs/train.yaml")
        load_config(TrainConfig, resolve_path(config), overrides)
    except UserError as e:
        raise UserError(f"a task's command would fail: {e}") from None


SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # SLURM's --time forms


def slurm_time(text: str) -> str:
    """An argparse `type` for SLURM's --time: minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S."""
    if not SLURM_TIME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a SLURM time (e.g. 04:00:00, 90, 1-12:00:00)"
        )
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ToolParser(prog="scripts.slurm_sweep", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="a grid sweep file, e.g. configs/sweeps/paper_seeds.yaml")
    p.add_argument("out", help="folder for commands.txt, sweep.sbatch and logs/ (a new one)")
    p.add_argument(
        "--time", type=slurm_time, default="04:00:00", help="each task's time limit (SLURM --time)"
    )
    p.add_argument(
        "--gpus", type=number(int, at_least=0), default=1, help="GPUs per task (0: none)"
    )
    p.add_argument("--cpus", type=number(int, at_least=1), default=8, help="CPU cores per task")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every command")
    return p.parse_args(argv)


def main(argv: list[str]) -> Path:
    args = parse_args(argv)
    bad = [s for s in args.set if "=" not in s or s.startswith("=")]
    if bad:
        raise UserError(f"--set {bad[0]!r}: expected KEY=VALUE (e.g. train.device=cuda)")
    commands = grid_commands(resolve_path(args.sweep), args.set)
    for cmd in commands:
        check_command(cmd)
    out = resolve_path(args.out)
    made = [n for n in ("commands.txt", "sweep.sbatch") if (out / n).exists()]
    if made:
        raise UserError(
            f"{out} already holds a job ({', '.join(made)}; tasks still queued read it); "
            "choose a new OUT_DIR (nothing was changed)"
        )
    out = make_dir(out, "OUT_DIR")
    logs = make_dir(out / "logs", "OUT_DIR/logs")
    atomic_write_text(out / "commands.txt", "".join(shlex.join(c) + "\n" for c in commands))
    resources = [f"#SBATCH --time={args.time}", f"#SBATCH --cpus-per-task={args.cpus}"]
    resources += [f"#SBATCH --gres=gpu:{args.gpus}"] if args.gpus else []
    resources += [f"#SBATCH --partition={args.partition}"] if args.partition else []
    script = TEMPLATE.format(
        name=f"tf-matcomp-{Path(args.sweep).stem}",
        last=len(commands) - 1,
        logs=shlex.quote(str(logs)),
        resources="\n".join(resources),
        sweep=args.sweep,
        root=shlex.quote(str(REPO_ROOT)),
        commands=shlex.quote(str(out / "commands.txt")),
    )
    atomic_write_text(out / "sweep.sbatch", script)
    print(f"{len(commands)} tasks; submit with: sbatch {out / 'sweep.sbatch'}")
    return out / "sweep.sbatch"


if __name__ == "__main__":
    run_script(main)
