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
Each row is outcomes.compare: how the plateau, the drop and completion are read off a log.
How docs/results/cpu_demo/seeds was
made (with --below 5).
"""

from __future__ import annotations

import argparse
import json

from outcomes import BELOW, FINAL_LOGS, RISE, SMOOTH_LOGS, compare, matrix_shape, read_run
from utils.config import ToolParser, UserError, number, resolve_path, run_script
from utils.files import atomic_write_text, make_dir, write_json
from utils.plots import close_figure, pyplot, save_figure
from utils.results import markdown_table


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


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    below, out = args.below, resolve_path(args.out)
    run_dirs = [resolve_path(a) for a in args.runs]
    runs, rows = {}, {}
    for typed, run in zip(args.runs, run_dirs):
        records = read_run(run)
        path = run / "summary.json"
        try:
            summary = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON") from None
        runs[run.name] = records
        rows[run.name] = {"run": run.name, "path": typed}  # as typed: no machine's folders
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
