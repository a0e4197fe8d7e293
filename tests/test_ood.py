import json
import math

import pytest
import torch
from conftest import ROOT

import ood
import utils
from data import DataConfig
from utils import UserError


def test_smoke_sweeps_and_says_where_it_stops(tiny_run, tmp_path):
    run, _ = tiny_run  # 4×4 rank-1 matrices, 64 positions
    cfg = utils.load_config(
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
