"""What a training run came to, read off its log: the plateau, the drop, and whether it completed.

`compare(records)` is one run's row: the drop (train.py's detect_drop on the total loss: sudden,
partial or none, where it starts and ends, in steps and minutes), L_mask on the plateau (the
median of the logged L_mask over the second half of the stretch before the drop; before a partial
drop's fall; over the whole run without either) and at the end (the median of the last
`FINAL_LOGS` logs: one batch's L_mask is noisy), their ratio, the first logged step where the
median of the last `SMOOTH_LOGS` logs falls `below`× under the plateau, and `complete` (that step
exists and the end is still that far below); for runs logged with train.progress, when the
hidden progress shows (`hidden_progress`). `read_run` reads and checks a run folder's log.
scripts/compare_runs.py tabulates it, scripts/sweep.py prunes by it, scripts/claims_report.py
counts seeds by it.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from measures import chance_shares
from utils.config import UserError
from utils.drop import detect_drop
from utils.runs import read_metrics

FINAL_LOGS = 20
SMOOTH_LOGS = 10
BELOW = 8.0  # completion: L_mask stays this many times below the plateau (issue #25)
RISE = 0.05


def hidden_progress(records: list[dict], shape: tuple[int, int] | None, drop_step) -> dict:
    """When the progress hidden on the plateau shows (runs logged with train.progress):
    `head_rise_step`, the first logged step at which some head's share on its row (or column)
    exceeds what uniform attention gives (measures.chance_shares: (n − 1) / mn, or (m − 1) / mn)
    by more than RISE; and `collapse_peak_step`, where the last layer's representation collapse
    peaks before the drop (over the whole run without one, or when nothing was measured before
    it: progress switched on in a resume after the drop)."""
    out = {"head_rise_step": None, "collapse_peak_step": None}
    logged = [r for r in records if "att_row" in r]
    if not logged:
        return out
    if shape is not None:
        chance = chance_shares(*shape, observed_fraction=1.0)
        for r in logged:
            rows = max(max(layer) for layer in r["att_row"]) - chance["row"]
            cols = max(max(layer) for layer in r["att_col"]) - chance["col"]
            if max(rows, cols) > RISE:
                out["head_rise_step"] = r["step"]
                break
    before = [r for r in logged if drop_step is None or r["step"] <= drop_step] or logged
    out["collapse_peak_step"] = max(before, key=lambda r: r["collapse"][-1])["step"]
    return out


def compare(
    records: list[dict],
    wall_time: float | None = None,
    shape: tuple[int, int] | None = None,
    below: float = BELOW,
) -> dict:
    """One run's row, from its logged records (the step order of metrics.jsonl); `shape`, the
    run's matrix size (None for a mixture of sizes), sets the heads' chance shares; `below`,
    how far under the plateau L_mask must stay to count as complete."""
    steps = [r["step"] for r in records]
    drop = detect_drop(steps, [r["loss"] for r in records])
    time_at = {r["step"]: r["time"] / 60 for r in records}
    row = {
        **drop,
        "drop_min": time_at.get(drop["drop_step"]),
        "drop_end_min": time_at.get(drop["drop_end_step"]),
        "plateau_loss_mask": None,
        "final_loss_mask": statistics.median(r["loss_mask"] for r in records[-FINAL_LOGS:]),
        "ratio": None,
        "below_step": None,
        "below_min": None,
        "complete": False,
        "final_eval_loss": records[-1].get("eval_loss"),
        "steps": steps[-1],
        "wall_min": (wall_time if wall_time is not None else records[-1]["time"]) / 60,
        **hidden_progress(records, shape, drop["drop_step"]),
    }
    if drop["drop_kind"] is None:
        return row
    left = drop["drop_step"] or drop["fall_start_step"] or steps[-1] + 1  # where the plateau ends
    on_plateau = [r["loss_mask"] for r in records if left / 2 <= r["step"] < left]
    level = statistics.median(on_plateau or [r["loss_mask"] for r in records])
    row["plateau_loss_mask"] = level
    row["ratio"] = level / row["final_loss_mask"]
    for i in range(SMOOTH_LOGS, len(records) + 1):
        recent = records[i - SMOOTH_LOGS : i]
        if statistics.median(r["loss_mask"] for r in recent) < level / below:
            row["below_step"] = recent[-1]["step"]
            row["below_min"] = recent[-1]["time"] / 60
            break
    row["complete"] = row["below_step"] is not None and row["ratio"] >= below
    return row


def matrix_shape(run: Path) -> tuple[int, int] | None:
    """(m, n) from the run's config.yaml; None for a mixture of sizes or no config."""
    path = run / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML") from None
    data = config.get("data", {}) if isinstance(config, dict) else {}
    if not isinstance(data, dict) or data.get("sizes") or "m" not in data or "n" not in data:
        return None
    return data["m"], data["n"]


def read_run(run: Path) -> list[dict]:
    """A run's records, checked: steps that increase, and L_mask in every record."""
    path = run / "metrics.jsonl"
    records = read_metrics(path)
    if not records:
        raise UserError(f"{run} has no metrics.jsonl records (not a training run folder)")
    if any(not isinstance(r, dict) for r in records):
        raise UserError(f"{path}: a line is not a record (a JSON object)")
    steps = [r.get("step") for r in records]
    if any(not isinstance(s, int) for s in steps):
        raise UserError(f"{path}: a record has no integer 'step'")
    back = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)
    if back is not None:
        raise UserError(
            f"{path}: steps go backwards at line {back + 1} ({steps[back - 1]} then "
            f"{steps[back]}); a log of two runs? (train.py trims its log on resume)"
        )
    missing = [k for k in ("loss", "loss_mask") if any(k not in r for r in records)]
    if missing:
        raise UserError(f"{path}: records without {', '.join(missing)} (not a train.py log)")
    return records
