"""scripts/sweep.py: seeds (and settings) side by side, each run's drop, the completion table."""

import json
import subprocess
import sys

from conftest import ROOT, TINY

from utils.runs import checkpoints, read_metrics

VARIANT = " ".join(o for o in TINY if not o.startswith(("train.steps=", "train.save_steps=")))


def sweep(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.sweep", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_seeds_side_by_side_write_one_row_each_and_the_completion_table(tmp_path):
    """Catches a seed that is not passed on (two runs of one seed), a run missing from the
    table, and the completion table (compare_runs) not written for the sweep's runs."""
    variant = f"t: {VARIANT} train.steps=20"
    done = sweep(tmp_path, "--seeds", "3", "4", "--parallel", "2", "--variant", variant)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["variant"], r["seed"], r["last_step"]) for r in rows] == [("t", 3, 20), ("t", 4, 20)]
    assert all(r["finished"] for r in rows)
    losses = [read_metrics(tmp_path / f"t_s{s}" / "metrics.jsonl")[0]["loss"] for s in (3, 4)]
    assert losses[0] != losses[1]  # different seeds, different data
    compare = json.loads((tmp_path / "compare" / "summary.json").read_text())
    assert [r["run"] for r in compare["runs"]] == ["t_s3", "t_s4"] and compare["below"] == 8.0
    assert (tmp_path / "compare" / "runs.md").read_text().startswith("complete (L_mask 8× below")


def test_a_run_stopped_at_the_time_limit_keeps_its_checkpoint_and_summary(tmp_path):
    """Catches a time limit that kills a run outright (SIGKILL): the run must be stopped with
    SIGTERM, so train.py saves a checkpoint, summary.json and loss.png that a resume continues."""
    variant = f"long: {VARIANT} train.steps=100000"
    done = sweep(tmp_path, "--seeds", "0", "--time-limit", "20", "--variant", variant)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads((tmp_path / "sweep.json").read_text())
    assert not row["finished"] and row["last_step"] > 0
    run = tmp_path / "long_s0"
    assert checkpoints(run), list(run.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_step"] == row["last_step"] and (run / "loss.png").is_file()
    assert "SIGTERM at step" in (run / "log.txt").read_text()


def test_prune_stops_runs_whose_l_mask_has_not_halved_past_the_rung(tmp_path):
    """Catches pruning that stops a run before its rung, spares a flat run past it, or stops a
    run whose L_mask has fallen, suddenly or part way (the first version pruned partial drops
    that went on to fall 6x under the decaying lr of the CPU-miniature search)."""
    from scripts import sweep as sweep_script

    def run(name, l_mask):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text("train:\n  steps: 1000\n")
        lines = [
            json.dumps({"step": 10 * (i + 1), "loss": 0.3 * v, "loss_mask": v, "time": i})
            for i, v in enumerate(l_mask)
        ]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        return folder

    flat = [0.11] * 60
    dropped = [0.11] * 30 + [0.11 * 0.8**k for k in range(1, 31)]
    partial = [0.11] * 30 + [0.11 / (1 + k / 10) for k in range(1, 31)]  # 4x below at the end
    assert sweep_script.pruned(run("flat", flat), 0.5)  # 600 of 1000 steps, no drop
    assert not sweep_script.pruned(run("early", flat), 0.7)  # before the rung
    assert not sweep_script.pruned(run("dropped", dropped), 0.5)
    assert not sweep_script.pruned(run("partial", partial), 0.5)


def test_a_sweep_inside_the_repo_names_no_machine_folder_in_its_logs_and_configs():
    """Catches absolute folders in a sweep's run logs and saved configs (train.out_dir given as
    this machine's path): committed sweep results had to be edited by hand before."""
    import shutil
    import uuid

    out = ROOT / "results" / f"pytest_sweep_{uuid.uuid4().hex[:8]}"  # /results/ is git-ignored
    try:
        done = subprocess.run(
            [sys.executable, "-m", "scripts.sweep", "--out", str(out.relative_to(ROOT))]
            + ["--seeds", "0", "--variant", f"t: {VARIANT} train.steps=5 train.resume=true"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        written = [p for p in out.rglob("*") if p.suffix in (".txt", ".yaml", ".json", ".md")]
        assert any(p.name == "log.txt" for p in written) and any(
            p.name == "config.yaml" for p in written
        )
        for path in written:
            assert str(ROOT) not in path.read_text(errors="replace"), path
    finally:
        shutil.rmtree(out, ignore_errors=True)
