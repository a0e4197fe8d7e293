"""Re-detect the drop in a finished run and redraw its loss plot, from its metrics.jsonl alone.

    python3 -m scripts.resummarize runs/train [more run folders ...]

Rewrites summary.json's plateau / drop fields (the rest is kept) and loss.png in each folder,
with train.py's current detector (detect_drop) and figure (hidden-progress panels included
where the run logged them). Useful after changing the detector, or
for a run that was stopped before it wrote its summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from measures import final_roles
from utils.config import UserError, run_script
from utils.drop import detect_drop
from utils.files import write_json
from utils.plots import plot_losses
from utils.runs import read_metrics


def resummarize(run_dir: Path) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise UserError(f"{run_dir} has no metrics.jsonl records")
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None
    summary.update(detect_drop([r["step"] for r in records], [r["loss"] for r in records]))
    drop = summary["drop_step"]
    summary["drop_time_s"] = next((r["time"] for r in records if r["step"] == drop), None)
    write_json(path, summary)
    data = _data_section(run_dir)
    shape = (data["m"], data["n"]) if data and not data.get("sizes") else None
    plot_losses(records, run_dir, summary, run_dir.name, shape, final_roles(records))
    return summary


def _data_section(run_dir: Path) -> dict | None:
    """The run's data config (config.yaml), for the chance level of the head shares."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("data")


def main(args: list[str]) -> None:
    for arg in args:
        s = resummarize(Path(arg))
        print(f"{arg}: plateau {s['plateau_loss']}, drop {s['drop_step']}..{s['drop_end_step']}")


if __name__ == "__main__":
    run_script(main)
