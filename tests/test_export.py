"""HF-format exports (scripts/export_run.py --hf): the tools researchers use load our weights."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import copy_check
from analysis import trained_data_config
from data import MatrixSampler
from model import load_checkpoint
from utils.config import UserError, load_config

DEMO, DEMO_HF = ROOT / "checkpoints/cpu_demo", ROOT / "checkpoints/cpu_demo_hf"


def _inputs(ckpt: dict, n: int = 64) -> torch.Tensor:
    return MatrixSampler(trained_data_config(ckpt), seed=3).sample(n).input_ids


@pytest.mark.parametrize("step", [2000, 20000])
def test_transformers_loads_the_shipped_export_and_predicts_what_we_predict(step, monkeypatch):
    """Catches a key or shape mapped wrongly between our names and HF's (a read-out stored as
    something else, the token-type row not zero, a layer's weights swapped): HF's
    BertForTokenClassification must reproduce MatrixBert's predictions within 1e-5, and its
    BertModel our backbone's hidden states."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours, ckpt = load_checkpoint(DEMO / f"step_{step:06d}.pt")
    folder = DEMO_HF / f"step_{step:06d}"
    hf = transformers.AutoModelForTokenClassification.from_pretrained(folder).eval()
    ids = _inputs(ckpt)
    with torch.no_grad():
        expected = ours(ids)
        got = hf(input_ids=ids).logits.squeeze(-1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        backbone = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
        hidden = backbone(input_ids=ids).last_hidden_state
        torch.testing.assert_close(
            hidden, ours.backbone(ids).last_hidden_state, atol=1e-5, rtol=1e-5
        )


def test_an_analysis_reads_the_exported_folder_as_its_run(tmp_path):
    """Catches an export the analyses cannot read, or read as another model: copy_check on
    --ckpt.run=checkpoints/cpu_demo_hf gives the numbers it gives on the .pt checkpoints."""
    rows = {}
    for name, run in (("pt", DEMO), ("hf", DEMO_HF)):
        cfg = load_config(
            copy_check.CopyCheckConfig,
            ROOT / "configs/copy_check.yaml",
            [f"ckpt.run={run}", "ckpt.steps=[2000,20000]", f"out_dir={tmp_path / name}"]
            + ["data.num_samples=64", "device=cpu"],
        )
        rows[name] = copy_check.main(cfg)["rows"]
    assert [r["step"] for r in rows["hf"]] == [2000, 2000, 2000, 2000, 20000, 20000, 20000, 20000]
    for a, b in zip(rows["pt"], rows["hf"]):
        assert a["input"] == b["input"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_export_round_trips_a_run_and_refuses_a_folder_that_is_not_one(tiny_run, tmp_path):
    """Catches an export whose reading back loses the data config or the step (the analyses
    draw their matrices from it) or changes a weight, and a corrupt folder read as a model."""
    run, _ = tiny_run
    out = tmp_path / "hf"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.export_run", "--hf", str(run), str(out), "20"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    card = (out / "step_000020" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "0.44 → 1045" in card
    config = json.loads((out / "step_000020" / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"] and config["num_labels"] == 1
    back, ckpt = load_checkpoint(out / "step_000020")
    original, theirs = load_checkpoint(run / "step_000020.pt")
    assert ckpt["step"] == 20 and ckpt["config"]["data"] == theirs["config"]["data"]
    for key, value in original.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    (out / "step_000020" / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="model.safetensors is corrupt"):
        load_checkpoint(out / "step_000020")
