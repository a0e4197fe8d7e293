"""scripts/claims.py: every claim's runs in miniature over seeds, in one command that resumes."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, TINY

from scripts import claims
from utils.runs import read_metrics

TOY = [o for o in TINY if not o.startswith(("train.steps=", "train.save_steps="))]
TOY += ["train.steps=12", "train.save_steps=[]"]


def _claims(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.claims", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_every_claim_plans_runs_that_train_py_takes(tmp_path):
    """Catches a claim whose variant train.py would refuse (a key, a size the width's heads do
    not divide) found only hours into a run: planning loads every run's config. And the claims'
    counterparts: ¼, ½, 2× width, 2, 6, 8 layers, the ±30 vocabulary of N(0, 1) factors."""
    args = claims.parse_args(["run", str(tmp_path), "--base", "configs/train_tiny.yaml"])
    base = claims.load_config(claims.TrainConfig, ROOT / "configs/train_tiny.yaml")
    jobs = claims.plan(args, base, ROOT / "configs/train_tiny.yaml", tmp_path)
    names = {(j.claim, j.name) for j in jobs}
    for claim, name in [
        ("width", "w32_s0"),
        ("width", "w64_s0"),
        ("width", "w256_s0"),
        ("depth", "L2_s0"),
        ("depth", "L8_s2"),
        ("gaussian", "gaussian_s1"),
        ("mixture", "mix345_s0"),
        ("larger", "7x7r2_s2"),
        ("components", "s1"),
        ("probe", "s2"),
        ("ood", "s0"),
    ]:
        assert (claim, name) in names, (claim, name)
    gaussian = next(j for j in jobs if j.claim == "gaussian")
    assert "--data.max_vocab=30.0" in gaussian.cmd
    assert next(j for j in jobs if j.name == "w256_s0").flops > 3  # 2× width: ≈ 4× the work


def test_the_claims_run_resumes_and_reports_k_of_n(tmp_path):
    """One command, two seeds, a few steps: catches a probe started before its seed's run
    finished, a second call that trains again instead of skipping what is done, and a report
    that does not count seeds."""
    out = tmp_path / "claims"
    args = ["--base", "configs/train_tiny.yaml", "--seeds", "0", "1", "--only", "probe"]
    args += ["--set", *TOY]
    first = _claims("run", str(out), *args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("4 of 4 jobs to run")
    assert (out / "probe" / "s1" / "summary.json").is_file()
    again = _claims("run", str(out), *args)
    assert again.returncode == 0 and again.stdout.startswith("0 of 4 jobs to run"), again.stdout
    report = _claims("report", str(out), "--seeds", "0", "1")
    assert report.returncode == 0, report.stderr[-2000:]
    assert "/2 seeds" in (out / "probe" / "runs.md").read_text()
    assert "probe" in (out / "claims.md").read_text()
    # the claim's figure, every seed's line, and its numbers in summary.json beside it
    figure = json.loads((out / "probe" / "summary.json").read_text())["figure"]
    trained = claims.load_config(claims.TrainConfig, out / "base" / "base_s1" / "config.yaml")
    layers = trained.model.num_hidden_layers + 1  # the embedding output, then every layer
    for panel in ("row-mates", "column-mates"):
        assert sorted(figure[panel]) == ["0", "1"], figure[panel].keys()
        assert figure[panel]["1"]["x"] == list(range(layers))
    assert (out / "probe" / "probe.png").stat().st_size > 10_000


def test_bases_start_first_then_whole_claims_in_the_order_asked(tmp_path):
    """Catches a plan that goes seed by seed (a run cut short then leaves every claim with one
    seed fewer instead of whole claims), a --variants filter that drops the base runs every
    analysis needs, and --components-steps that is not what train_embed.py is told."""
    args = claims.parse_args(
        ["run", str(tmp_path), "--base", "configs/train_tiny.yaml", "--seeds", "0", "1"]
        + ["--only", "depth", "components", "width", "--variants", "L6", "w32"]
        + ["--components-steps", "77"]
    )
    base = claims.load_config(claims.TrainConfig, ROOT / "configs/train_tiny.yaml")
    jobs = claims.plan(args, base, ROOT / "configs/train_tiny.yaml", tmp_path)
    assert [(j.claim, j.name) for j in jobs] == [
        ("base", "base_s0"),
        ("base", "base_s1"),
        ("depth", "L6_s0"),
        ("depth", "L6_s1"),
        ("components", "s0"),
        ("components", "s1"),
        ("width", "w32_s0"),
        ("width", "w32_s1"),
    ]
    component = next(j for j in jobs if j.claim == "components")
    assert "--train.steps=77" in component.cmd
    assert component.flops == len(claims.GROUPS) * 77 / base.train.steps


def test_an_unknown_variant_is_one_line_and_starts_nothing(tmp_path):
    """Catches a misspelt variant that silently plans nothing for its claim (hours later the
    claim's row is empty): the error names it and the variants there are."""
    out = tmp_path / "claims"
    result = _claims("run", str(out), "--base", "configs/train_tiny.yaml", "--variants", "L7")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--variants L7: no such variant" in lines[0], lines
    assert "L6" in lines[0]
    assert not any(out.rglob("*.json"))


def test_runs_inside_the_repo_are_named_relative_to_it():
    """Catches commands that hand train.py this machine's absolute folders: they land in every
    run's config.yaml, and results committed from docs/results/miniature then name /work/..."""
    out = ROOT / "docs" / "results" / "never_written"
    args = claims.parse_args(["run", str(out), "--base", "configs/train_tiny.yaml", "--seeds", "0"])
    base = claims.load_config(claims.TrainConfig, ROOT / "configs/train_tiny.yaml")
    jobs = claims.plan(args, base, ROOT / "configs/train_tiny.yaml", out)
    named = [arg for job in jobs for arg in job.cmd[1:] if str(ROOT) in arg]
    assert not named, named[:3]
    probe = next(j for j in jobs if j.claim == "probe")
    assert "--ckpt.run=docs/results/never_written/base/base_s0" in probe.cmd
    assert not out.exists()


def _fake_run(folder, drop_at, seed=0, layers=None, floor=0.005):
    """A run folder whose metrics.jsonl plateaus at 0.067 and, with drop_at, falls to `floor`
    there."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    steps = np.arange(1, 331) * 50
    loss = 0.067 * np.exp(rng.normal(0, 0.05, steps.size))
    if drop_at is not None:
        fall = 1 / (1 + np.exp(-(steps - drop_at - 300) / 100))
        loss = loss * (1 - fall) + fall * floor * np.exp(rng.normal(0, 0.05, steps.size))
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for s, v in zip(steps.tolist(), loss.tolist()):
            f.write(json.dumps({"step": s, "loss": v, "loss_mask": 1.6 * v, "time": s / 20}) + "\n")
    if layers is not None:
        (folder / "config.yaml").write_text(f"model:\n  num_hidden_layers: {layers}\n")


def test_the_depth_verdict_counts_seeds_by_the_direction_of_each_drop(tmp_path):
    """Catches a verdict that compares the wrong way (deeper later counted as earlier), one that
    counts a run without a drop as having dropped first, or names a layer count the base does
    not have (the paper's "before 4" printed over a 3-layer base)."""
    from scripts.claims_report import depth

    drops = [(6_000, 4_000, 9_000), (6_000, 4_500, None), (6_000, None, 5_000)]  # base, L6, L2
    for seed, (base, l6, l2) in enumerate(drops):
        _fake_run(tmp_path / "base" / f"base_s{seed}", base, seed, layers=3)
        _fake_run(tmp_path / "depth" / f"L6_s{seed}", l6, seed)
        _fake_run(tmp_path / "depth" / f"L2_s{seed}", l2, seed)
    verdict = depth(tmp_path, [0, 1, 2])["verdict"]
    assert verdict.startswith("6 layers drop before the base's 3 on 2/3 seeds"), verdict
    assert "2 layers drop after the base's on 2/3" in verdict, verdict


def test_components_train_each_group_on_its_seeds_base_and_report(tmp_path):
    """Fig. 8 end to end on a toy size: catches a train_embed.py command the script refuses
    (its flags are built from the base's train section), --components-steps not reaching the
    runs, a component started before its seed's base run, and a report that skips the claim."""
    out = tmp_path / "claims"
    args = ["--base", "configs/train_tiny.yaml", "--seeds", "0", "1", "--only", "components"]
    result = _claims("run", str(out), *args, "--components-steps", "6", "--set", *TOY)
    assert result.returncode == 0, result.stderr[-2000:]
    for seed in (0, 1):
        for group in claims.GROUPS:
            records = read_metrics(out / "components" / f"s{seed}" / group / "metrics.jsonl")
            assert records and records[-1]["step"] == 6, (seed, group)
    report = _claims("report", str(out), "--seeds", "0", "1")
    assert report.returncode == 0, report.stderr[-2000:]
    summary = json.loads((out / "components" / "summary.json").read_text())
    assert summary["verdict"] != "not run"
    assert {row["group"] for row in summary["table"]} == set(claims.GROUPS)
    assert (out / "components" / "components.png").stat().st_size > 10_000


def test_components_tell_no_plateau_from_a_late_drop_and_no_drop(tmp_path):
    """Fig. 8's shapes: catches a group whose loss falls at once but only 5× (the frozen rest
    holds it up) called 'no drop', a late drop called 'no plateau', and a flat group counted
    as falling before full training."""
    from scripts.claims_report import components

    _fake_run(tmp_path / "base" / "base_s0", 6_000)
    shapes = {"mlp": (0, 0.0134), "attention": (4_000, 0.005), "position_embeddings": (None, 0)}
    for group, (drop_at, floor) in shapes.items():
        _fake_run(tmp_path / "components" / "s0" / group, drop_at, floor=floor)
    result = components(tmp_path, [0])
    shape = {row["group"]: row["shape"] for row in result["table"]}
    assert shape == {
        "mlp": "no plateau",
        "attention": "plateau, then a drop",
        "position_embeddings": "no drop",
    }, shape
    assert (
        "attention: plateau, then a drop 1/1; falls before full training drops 1/1"
        in (result["verdict"])
    )
    assert (
        "position_embeddings: no drop 1/1; falls before full training drops 0/1"
        in (result["verdict"])
    )


def test_the_width_verdict_reads_narrower_and_wider_against_the_base(tmp_path):
    """Catches a 2x width left out of the verdict, or compared the wrong way (a wider run that
    ends above the base counted as better), and the narrow and half widths misread."""
    from scripts.claims_report import width

    for seed in range(3):
        _fake_run(tmp_path / "base" / f"base_s{seed}", 6_000, seed, floor=0.005)
        (tmp_path / "base" / f"base_s{seed}" / "config.yaml").write_text(
            "model:\n  hidden_size: 64\n  num_hidden_layers: 3\n"
        )
        _fake_run(tmp_path / "width" / f"w16_s{seed}", None, seed)
        _fake_run(tmp_path / "width" / f"w32_s{seed}", 9_000, seed, floor=0.02)
        wide_floor = 0.003 if seed < 2 else 0.02  # seed 2's 2x width ends above the base
        _fake_run(tmp_path / "width" / f"w128_s{seed}", 5_000, seed, floor=wide_floor)
    verdict = width(tmp_path, [0, 1, 2])["verdict"]
    assert verdict == (
        "w16 fails (no sudden drop) on 3/3 seeds; w32 ends above the base width on 3/3; "
        "w128 ends at or below the base width on 2/3"
    ), verdict
