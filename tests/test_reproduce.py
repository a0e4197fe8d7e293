"""reproduce.sh --tiny: the whole pipeline (training, then every analysis) on the CPU demo."""

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT

STAGES = {
    "train",
    "copy_check",
    "compare_nuc_bert",
    "ood",
    "att_maps",
    "att_maps_row",
    "patch",
    "uniform_ablation",
    "probe",
    "switch_models",
    "embed/token_norm",
    "embed/token_pca",
    "embed/pos_norm",
    "embed/pos_tsne",
    "embed/permute",
    "embed/token_progress",
    "embed/pos_progress",
}


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, float):
        yield x


def test_reproduce_tiny_runs_every_stage(tmp_path):
    out = tmp_path / "rep"
    proc = subprocess.run(
        # a narrower model than the demo's, so that the whole pipeline stays a CI-sized test
        ["bash", str(ROOT / "reproduce.sh"), "--tiny", "--steps", "40", "--out", str(out)]
        + ["--set", "model.hidden_size=32", "--set", "model.intermediate_size=64"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert STAGES <= set(results)
    assert results["train"]["final_step"] == 40
    assert all(math.isfinite(v) for v in _numbers(results))
    for figure in (
        "att_maps/att_maps_step000040.png",
        "compare_nuc_bert/compare_nuc_bert.pdf",
        "train/loss.png",
        "probe/probe.png",
    ):
        assert (out / figure).is_file(), figure


def test_reproduce_rejects_unknown_options():
    proc = subprocess.run(
        ["bash", str(ROOT / "reproduce.sh"), "--bogus"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown option '--bogus'" in proc.stderr


def test_collect_results_on_an_empty_folder_is_one_line(tmp_path):
    proc = subprocess.run(
        ["python3", "-m", "scripts.collect_results", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert (
        proc.returncode != 0 and proc.stderr.strip() == f"error: no summary.json under {tmp_path}"
    )


def test_gpu_claims_variants_are_valid_overrides():
    """Every variant scripts/gpu_claims.sh would train on a GPU is a config train.py takes."""
    done = subprocess.run(
        ["bash", "scripts/gpu_claims.sh", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ok: ") == 5


def test_results_json_holds_each_stage_summary_under_its_folder(tmp_path):
    """Catches results.json keying or copying the stages' numbers wrongly: on a constructed
    output folder it must hold every summary.json unchanged, under its folder's relative path."""
    summaries = {
        "train": {"final_step": 40, "final_loss": 0.03125},
        "embed/token_norm": {"norm_symmetry_corr": -0.5, "rows": [{"step": 10, "x": 1e-7}]},
    }
    for stage, summary in summaries.items():
        (tmp_path / stage).mkdir(parents=True)
        (tmp_path / stage / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "train" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # not a summary
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.collect_results", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "results.json").read_text()) == summaries


def test_gpu_probe_commands_load():
    """Every command scripts/gpu_probe.sh would run on a GPU takes its config (both models)."""
    done = subprocess.run(
        ["bash", "scripts/gpu_probe.sh", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ok: paper",
        "ok: deep",
        "ok: probe, embed, att_maps, uniform_ablation",
    ]


def test_export_run_keeps_the_weights_and_drops_the_rest(tiny_run, tmp_path):
    """Catches an exported checkpoint that predicts differently from the original (or still
    carries the optimizer state that triples its size), and an export over an existing folder."""
    import torch

    from model import load_checkpoint

    run, _ = tiny_run
    out = tmp_path / "exported"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.export_run", str(run), str(out), "10", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png"):
        assert (out / name).is_file()
    slim = torch.load(out / "step_000020.pt", weights_only=True)
    assert set(slim) == {"model", "model_config", "config", "step"}
    ids = torch.randint(0, 2002, (3, 16))
    a, _ = load_checkpoint(run / "step_000020.pt")
    b, _ = load_checkpoint(out / "step_000020.pt")
    assert torch.equal(a(ids), b(ids))
    again = subprocess.run(
        [sys.executable, "-m", "scripts.export_run", str(run), str(out), "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "exists" in again.stderr


def _sharp_drop_run(folder, spike_at_end=True):
    """A logged run of 4×4 matrices whose L_mask is 0.1 until step 5,000 (one 0.5 spike at
    3,000) and 0.01 from there to step 10,000 (one 1.0 spike at the last log); the total loss is
    0.3 · L_mask. Its one layer of two heads: head 1's row share is at chance (uniform attention:
    3/16 = 0.1875), 0.235 at 3,500 and 0.3 from 4,000 on; collapse peaks at 3,000 (0.9) before
    the drop and at 8,000 (0.95) after it."""
    folder.mkdir()
    records = []
    for step in range(0, 10_001, 100):
        mask = 0.1 if step < 5000 else 0.01
        mask = 0.5 if step == 3000 else 1.0 if step == 10_000 and spike_at_end else mask
        row = 0.3 if step >= 4000 else 0.235 if step == 3500 else 0.1875
        collapse = {3000: 0.9, 8000: 0.95}.get(step, 0.5)
        records.append(
            {
                "step": step,
                "loss": 0.3 * mask,
                "loss_mask": mask,
                "time": step * 0.06,
                "att_row": [[0.1875, row]],
                "att_col": [[0.1875, 0.1875]],
                "collapse": [0.1, collapse],
            }
        )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "config.yaml").write_text("data:\n  m: 4\n  n: 4\n  sizes: []\n")
    return records


def test_compare_runs_reads_levels_as_medians_and_the_completion_as_lasting(tmp_path):
    """Catches a plateau or final L_mask read from one noisy log (or a mean) instead of a median,
    and a "5× below" step taken at the first single log below rather than where it stays below."""
    import outcomes

    row = outcomes.compare(_sharp_drop_run(tmp_path / "a"), shape=(4, 4))
    assert 4000 < row["drop_step"] < row["drop_end_step"] <= 5500
    assert row["plateau_loss_mask"] == 0.1  # the 0.5 spike at 3,000 is outvoted
    assert row["final_loss_mask"] == 0.01  # and so is the 1.0 at the last log
    assert row["ratio"] == pytest.approx(10)
    # the median of the last 10 logs: 4 at 0.1 and 6 at 0.01 first at step 5,500
    assert row["below_step"] == 5500 and row["below_min"] == pytest.approx(5.5)
    assert row["wall_min"] == pytest.approx(10.0)
    assert row["complete"] and row["drop_kind"] == "sudden"
    # hidden progress: 0.235 is within RISE of chance, 0.3 is not; the collapse peak after the
    # drop (8,000) is not the one before it
    assert row["head_rise_step"] == 4000 and row["collapse_peak_step"] == 3000


def test_compare_runs_writes_the_table_figure_and_summary(tmp_path):
    """Catches a summary.json that loses a run or disagrees with the table, and a run without a
    drop that breaks the comparison instead of showing as '—'."""
    _sharp_drop_run(tmp_path / "s0")
    (tmp_path / "flat").mkdir()
    flat = [
        {"step": s, "loss": 0.03, "loss_mask": 0.1, "time": s * 0.06} for s in range(0, 5001, 100)
    ]
    (tmp_path / "flat" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flat))
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.compare_runs",
            str(out),
            str(tmp_path / "s0"),
            str(tmp_path / "flat"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["s0", "flat"]
    assert summary["runs"][0]["below_step"] == 5500
    assert summary["runs"][0]["head_rise_step"] == 4000  # the shape read from its config.yaml
    flat_row = summary["runs"][1]
    assert flat_row["drop_step"] is None and flat_row["drop_kind"] == "none"
    assert flat_row["ratio"] == 1.0 and not flat_row["complete"] and summary["complete"] == 1
    lines = (out / "runs.md").read_text().splitlines()
    assert lines[0].endswith(": 1 of 2 runs")
    table = lines[2:]
    assert table[2].startswith("| s0 |") and "| 5500 |" in table[2]
    assert table[3].startswith("| flat |") and "—" in table[3]
    assert (out / "runs.png").stat().st_size > 10_000
    missing = subprocess.run(
        [sys.executable, "-m", "scripts.compare_runs", str(out), str(tmp_path / "nothing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no metrics.jsonl" in missing.stderr


def test_compare_runs_records_each_run_as_typed(tmp_path, monkeypatch):
    """Catches a summary.json that names the machine's folders (the absolute path a relative run
    argument resolves to), which then lands in committed results (.ci/run refused one)."""
    import utils.config
    from scripts import compare_runs

    monkeypatch.setattr(utils.config, "REPO_ROOT", tmp_path)  # relative paths anchor here
    (tmp_path / "runs").mkdir()
    _sharp_drop_run(tmp_path / "runs" / "s0")
    compare_runs.main(["out", "runs/s0"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["path"] for r in summary["runs"]] == ["runs/s0"]


def test_compare_runs_chance_is_uniform_attention_for_rows_and_columns():
    """Catches a chance level of the head shares other than what uniform attention scores
    (measures.chance_shares: (n − 1) / mn for a row, (m − 1) / mn for a column; compare_runs used
    (n − 1) / (mn − 1)), and a rise looked for on rows only: on a 4×5 matrix a column share of
    3/20 + 0.051 rises, 3/20 + 0.049 does not, and one of 3/19 + 0.049 = 0.207 does."""
    import outcomes

    def run(col: float) -> list[dict]:
        return [
            {"step": s, "loss": 0.03, "loss_mask": 0.1, "time": s, "att_row": [[4 / 20]],
             "att_col": [[col if s >= 500 else 3 / 20]], "collapse": [0.5, 0.5]}
            for s in range(0, 1001, 100)
        ]  # fmt: skip

    rise = outcomes.hidden_progress
    assert rise(run(3 / 20 + 0.051), (4, 5), None)["head_rise_step"] == 500
    assert rise(run(3 / 20 + 0.049), (4, 5), None)["head_rise_step"] is None
    assert rise(run(3 / 19 + 0.049), (4, 5), None)["head_rise_step"] == 500


def test_compare_runs_collapse_peak_without_progress_before_the_drop():
    """Catches compare_runs failing (max of nothing) when no progress record lies at or before
    the drop, e.g. train.progress switched on in a resume after it."""
    import outcomes

    records = [
        {"step": s, "att_row": [[0.2]], "att_col": [[0.2]], "collapse": [0.5, c]}
        for s, c in ((6000, 0.7), (7000, 0.9), (8000, 0.6))
    ]
    assert outcomes.hidden_progress(records, (4, 4), 5000)["collapse_peak_step"] == 7000
