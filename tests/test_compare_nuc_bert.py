import json
import math

import pytest
from conftest import ROOT

import compare_nuc_bert
import utils
from utils import UserError


def _config(tiny_run, tmp_path, *overrides):
    run, _ = tiny_run
    return utils.load_config(
        compare_nuc_bert.CompareConfig,
        ROOT / "configs" / "compare_nuc_bert.yaml",
        [
            f"ckpt.run={run}",
            f"out_dir={tmp_path / 'out'}",
            "device=cpu",
            "data.num_samples=16",
            "data.batch_size=8",
            "compare.p_masks=[0.2, 0.5]",
            *overrides,
        ],
    )


def test_smoke_writes_every_output(tiny_run, tmp_path):
    summary = compare_nuc_bert.main(_config(tiny_run, tmp_path))
    out = tmp_path / "out"
    for name in ("config.yaml", "summary.json", "table.md"):
        assert (out / name).is_file(), name
    for name in ("compare_nuc_bert.png", "compare_nuc_bert.pdf"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert [r["p_mask"] for r in saved["rows"]] == [0.2, 0.5]
    assert saved["num_problems"] == 32 and saved["unsolved"] == 0
    for row in saved["rows"]:
        assert all(math.isfinite(v) for v in row.values()), row
        assert row["nuc_loss_obs"] == 0.0  # the minimiser keeps the observed entries


def test_data_p_mask_is_refused(tiny_run, tmp_path):
    with pytest.raises(UserError, match="compare.p_masks"):
        _config(tiny_run, tmp_path, "data.p_mask=0.3")


def test_missing_checkpoint_says_how_to_make_it(tmp_path):
    cfg = utils.load_config(
        compare_nuc_bert.CompareConfig,
        ROOT / "configs" / "compare_nuc_bert.yaml",
        [f"ckpt.run={tmp_path / 'nothing'}", "device=cpu"],
    )
    with pytest.raises(UserError, match="train.py"):
        compare_nuc_bert.main(cfg)
