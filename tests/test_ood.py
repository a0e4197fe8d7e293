import json
import math

import pytest
import torch
from conftest import ROOT
from torch import nn

import analysis as analysis_module
import ood
from analysis import AnalysisData, analysis_data_config
from data import DataConfig, detokenize
from model import load_checkpoint
from utils.config import UserError, load_config


def test_smoke_sweeps_and_says_where_it_stops(tiny_run, tmp_path):
    run, _ = tiny_run  # 4×4 rank-1 matrices, 64 positions
    cfg = load_config(
        ood.OodConfig,
        ROOT / "configs" / "ood.yaml",
        [
            f"ckpt.run={run}",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=8",
            "ood.distributions=[uniform, 'laplace:0.5']",
            "ood.ranks=[1, 5]",
            "ood.rows=[3, 17]",
            "ood.cols=[]",
        ],
    )
    summary = ood.main(cfg)
    out = tmp_path / "out"
    for name in ("config.yaml", "summary.json", "tables.md"):
        assert (out / name).is_file(), name
    for kind in ("distribution", "rank", "rows"):
        for ext in ("png", "pdf"):
            assert (out / f"ood_{kind}.{ext}").is_file(), (kind, ext)
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    sweeps = saved["sweeps"]
    assert set(sweeps) == {"distribution", "rank", "rows"}  # an empty list skips a sweep
    assert [r["value"] for r in sweeps["distribution"]["rows"]] == ["uniform", "laplace:0.5"]
    assert sweeps["rank"]["trained"] == 1 and sweeps["rows"]["trained"] == 4
    # 17 rows × 4 columns = 68 entries: more than the 64 positions; rank 5 > min(4, 4)
    assert [s["value"] for s in sweeps["rows"]["skipped"]] == [17]
    assert "64 position embeddings" in sweeps["rows"]["skipped"][0]["reason"]
    assert [s["value"] for s in sweeps["rank"]["skipped"]] == [5]
    assert "skipped rows = 17" in (out / "tables.md").read_text()
    for sweep in sweeps.values():
        for row in sweep["rows"]:
            assert all(math.isfinite(v) for k, v in row.items() if k != "value"), row


def test_distribution_specs():
    assert ood.parse_distribution("uniform") == ("uniform", None)
    assert ood.parse_distribution("gaussian:0.5") == ("gaussian", 0.5)
    with pytest.raises(UserError, match="valid: uniform, gaussian, laplace"):
        ood.parse_distribution("cauchy:1")
    with pytest.raises(UserError, match="positive scale"):
        ood.parse_distribution("laplace")
    with pytest.raises(UserError, match="no scale"):
        ood.parse_distribution("uniform:2")


def test_heavy_tails_are_redrawn_into_the_vocabulary():
    cfg = DataConfig(
        m=4, n=4, rank=1, distribution="laplace", scale=2.0, min_vocab=-3.0, max_vocab=3.0
    )
    batch, redrawn = ood.draw_in_vocabulary(cfg, 64, seed=0)
    assert 0 < redrawn < 1
    assert batch.target.abs().max() <= 3.0 and len(batch.target) == 64
    assert torch.equal(batch.input_ids != 0, batch.observed)
    with pytest.raises(UserError, match="smaller scale"):
        ood.draw_in_vocabulary(DataConfig(distribution="laplace", scale=50.0), 8, seed=0)


class Copier(nn.Module):
    """Outputs the value of each input token and 0 at MASK: it copies the observed entries
    perfectly and completes nothing."""

    def __init__(self, config):
        super().__init__()
        self.config = config  # the trained model's, so the same points fit or are skipped

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        values, _ = detokenize(input_ids, 1, input_ids.shape[-1])
        return values.flatten(-2)


def test_a_copying_model_scores_what_copying_scores_at_every_point(tiny_run, tmp_path, monkeypatch):
    """Catches a sweep that measures the model on other matrices than the point's: a copier has
    L_obs = 0 and L_mask = the mean square of the hidden entries of that point's matrices."""
    run, _ = tiny_run
    model, ckpt = load_checkpoint(run / "step_000020.pt")
    copier = Copier(model.config)
    monkeypatch.setattr(
        analysis_module, "load_from_section", lambda section, device: (copier, ckpt)
    )
    cfg = load_config(
        ood.OodConfig,
        ROOT / "configs" / "ood.yaml",
        [
            f"ckpt.run={run}",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=16",
            "ood.distributions=['gaussian:0.5']",
            "ood.ranks=[1, 3]",
            "ood.rows=[3]",
            "ood.cols=[6]",
        ],
    )
    summary = ood.main(cfg)
    points = ood.sweep_points(cfg.ood, cfg.data)
    for kind, sweep in summary["sweeps"].items():
        for (label, section), row in zip(points[kind], sweep["rows"], strict=True):
            data_cfg = analysis_data_config(ckpt, section, copier)
            batch, _ = ood.draw_in_vocabulary(data_cfg, 16, cfg.seed)
            hidden = batch.target[~batch.observed].double()
            assert row["value"] == label and row["unsolved"] == 0
            assert row["bert_loss_obs"] == 0 and row["nuc_loss_obs"] == 0  # both keep what is seen
            assert row["bert_loss_mask"] == pytest.approx(hidden.square().mean().item(), rel=1e-5)


def test_each_point_changes_one_thing_and_the_trained_one_is_marked():
    """Catches a sweep point that changes more than its own field (or the wrong one), the figure's
    "as trained" mark spelt unlike the sweep's labels (or rows and columns swapped: 5×6 here),
    and a redrawn fraction that is not 0 where every matrix fits (uniform factors)."""
    base = AnalysisData(m=5, n=6, rank=2, p_mask=0.2)
    section = ood.OodSection(["uniform", "gaussian:0.5"], ranks=[3], rows=[4], cols=[7])
    points = ood.sweep_points(section, base)
    labels = {kind: [label for label, _ in pts] for kind, pts in points.items()}
    want = {"distribution": ["uniform", "gaussian:0.5"], "rank": [3], "rows": [4], "cols": [7]}
    assert labels == want
    changed = {
        kind: [{k for k, v in vars(s).items() if v != getattr(base, k)} for _, s in pts]
        for kind, pts in points.items()
    }
    one_field = {"rank": [{"rank"}], "rows": [{"m"}], "cols": [{"n"}]}
    assert changed == {"distribution": [{"distribution"}, {"distribution", "scale"}], **one_field}
    trained = DataConfig(m=5, n=6, rank=2, distribution="gaussian", scale=0.5)
    marks = [ood.trained_value(k, trained) for k in ("distribution", "rank", "rows", "cols")]
    assert marks == ["gaussian:0.5", 2, 5, 6]
    _, redrawn = ood.draw_in_vocabulary(DataConfig(m=4, n=4, rank=1), 32, seed=0)
    assert redrawn == 0.0
