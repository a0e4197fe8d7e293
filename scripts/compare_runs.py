"""Compare finished training runs (seeds of one config, say): where each drops and how far.

    python3 -m scripts.compare_runs [--below X] [--replace] OUT_DIR RUN_DIR [RUN_DIR ...]

Reads each run's metrics.jsonl and summary.json and writes into OUT_DIR (created if needed; one
that holds a comparison is refused, unless --replace):
  runs.md       one row per run: plateau, the kind of drop (sudden, partial, none; with its
                fall, detect_drop), where the drop starts and ends (step and minutes),
                L_mask on the plateau and at the end, their ratio, when L_mask first stays X×
                below the plateau (`--below`, default 8: `complete`, the CPU demo's criterion),
                final eval loss, steps and wall time; and, for runs
                logged with train.progress, when the hidden progress shows: the first step
                a head attends to its row or column above chance, and where representation
                collapse peaks (`hidden_progress`);
  runs.png      every run's L_mask against steps and against wall-clock minutes;
  summary.json  the table's numbers (the figure's too).
The drop is train.py's (detect_drop on the total loss). L_mask on the plateau is the median
of the logged L_mask over the second half of the stretch before the drop (before a partial
drop's fall; over the whole run without either); at the end, the median of the last `FINAL_LOGS`
logs (one batch's L_mask is noisy); "X× below" is the first logged step where the median of the
last `SMOOTH_LOGS` logs falls under 1/X of the plateau's. How docs/results/cpu_demo/seeds was
made (with --below 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from measures import chance_shares
from utils.config import ToolParser, UserError, number, resolve_path, run_script
from utils.drop import detect_drop
from utils.files import atomic_write_text, make_dir, write_json
from utils.plots import close_figure, pyplot, save_figure
from utils.results import markdown_table
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


def figure(runs: dict[str, list[dict]], rows: dict[str, dict]):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
    for i, (name, records) in enumerate(runs.items()):
        colour = f"C{i}"
        mask = [r["loss_mask"] for r in records]
        for ax, x in zip(axes, ([r["step"] for r in records], [r["time"] / 60 for r in records])):
            ax.plot(x, mask, color=colour, lw=1, label=name)
        row = rows[name]
        if row["drop_step"] is not None:
            at = next(r for r in records if r["step"] == row["drop_step"])
            axes[0].plot(at["step"], at["loss_mask"], "o", color=colour, ms=5)
            axes[1].plot(at["time"] / 60, at["loss_mask"], "o", color=colour, ms=5)
    axes[0].set(xlabel="step", ylabel="L_mask (hidden entries, log scale)", yscale="log")
    axes[1].set(xlabel="wall-clock minutes")
    axes[0].set_title("L_mask of each run (dot: the drop starts)", loc="left")
    axes[1].legend(loc="upper right", frameon=False)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ToolParser(prog="scripts.compare_runs", description=__doc__.splitlines()[0])
    p.add_argument(
        "--below",
        type=number(float, above=1),
        default=BELOW,
        help="complete: L_mask this many times under the plateau, and still there at the end",
    )
    p.add_argument(
        "--replace", action="store_true", help="replace the comparison OUT_DIR already holds"
    )
    p.add_argument("out", help="output folder")
    p.add_argument("runs", nargs="+", help="training run folders")
    return p.parse_args(argv)


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


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    below, out = args.below, resolve_path(args.out)
    run_dirs = [resolve_path(a) for a in args.runs]
    runs, rows = {}, {}
    for run in run_dirs:
        records = read_run(run)
        path = run / "summary.json"
        try:
            summary = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON") from None
        runs[run.name] = records
        rows[run.name] = {"run": run.name, "path": str(run)}
        wall = summary.get("wall_time_s")
        rows[run.name].update(compare(records, wall, matrix_shape(run), below))
    if len(runs) < len(run_dirs):
        raise UserError("two runs share a folder name; their rows would clash")
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT_DIR {out} is a file, not a folder")
    earlier = [n for n in ("runs.md", "summary.json", "runs.png") if (out / n).exists()]
    if earlier and not args.replace:
        raise UserError(
            f"{out} already holds a comparison ({', '.join(earlier)}); choose another OUT_DIR "
            "or pass --replace (nothing was overwritten)"
        )
    make_dir(out, "OUT_DIR")
    done = sum(r["complete"] for r in rows.values())
    verdict = (
        f"complete (L_mask {below:g}× below the plateau and staying there): {done} of "
        f"{len(rows)} runs"
    )
    table = markdown_table(
        list(rows.values()),
        ["run", "plateau_loss", "drop_kind", "fall", "drop_step", "drop_min", "drop_end_step"]
        + ["drop_end_min", "plateau_loss_mask", "final_loss_mask", "ratio", "below_step"]
        + ["below_min", "complete", "final_eval_loss", "steps", "wall_min", "head_rise_step"]
        + ["collapse_peak_step"],
    )
    atomic_write_text(out / "runs.md", f"{verdict}\n\n{table}")
    fig = figure(runs, rows)
    save_figure(fig, out, "runs")
    close_figure(fig)
    summary = {
        "runs": list(rows.values()),
        "complete": done,
        "final_logs": FINAL_LOGS,
        "smooth_logs": SMOOTH_LOGS,
        "below": below,
        "rise": RISE,
    }
    write_json(out / "summary.json", summary)
    print(f"{verdict}\n\n{table}", end="")
    return summary


if __name__ == "__main__":
    run_script(main)
