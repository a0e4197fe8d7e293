"""Copy a training run's record and some of its checkpoints, weights only, into a new folder.

    python3 scripts/export_run.py RUN_DIR OUT_DIR STEP [STEP ...]

Writes OUT_DIR/config.yaml, metrics.jsonl, summary.json and loss.png as they are, and for each STEP
a step_NNNNNN.pt holding only what the analyses load (the weights, the model and run configs, the
step): no optimizer state or random-generator states, so a checkpoint is a third of the size and
the run cannot be resumed from it. How checkpoints/cpu_demo was made. OUT_DIR must not exist.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: E402

RECORD = ("config.yaml", "metrics.jsonl", "summary.json", "loss.png")
KEPT = ("model", "model_config", "config", "step")


def export(run: Path, out: Path, steps: list[int]) -> list[Path]:
    if out.exists():
        raise utils.UserError(f"{out} exists; export into a new folder")
    sources = [run / f"step_{step:06d}.pt" for step in steps]
    checkpoints = [utils.read_checkpoint(path) for path in sources]  # all readable first
    missing = [name for name in RECORD if not (run / name).is_file()]
    if missing:
        raise utils.UserError(f"{run} lacks {', '.join(missing)}: not a finished training run")
    out.mkdir(parents=True)
    for name in RECORD:
        shutil.copy2(run / name, out / name)
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    written = []
    for path, ckpt in zip(sources, checkpoints):
        slim = {k: ckpt[k] for k in KEPT if k in ckpt}
        if isinstance(slim.get("config", {}).get("train"), dict):  # the run now lives in `out`
            slim["config"]["train"]["out_dir"] = str(where)
        utils.save_checkpoint(out / path.name, slim)
        written.append(out / path.name)
    return written


def main(args: list[str]) -> None:
    if len(args) < 3 or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if args[:1] in (["-h"], ["--help"]) else 2)
    try:
        steps = [int(a) for a in args[2:]]
    except ValueError:
        raise utils.UserError("steps must be integers") from None
    for path in export(utils.resolve_path(args[0]), utils.resolve_path(args[1]), steps):
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    utils.run_script(main)
