"""Every analysis script checks its input before it writes anything: a shape the model cannot
take is a one-line error, and a previous run's output folder is left as it was."""

import importlib
import typing
from pathlib import Path

import pytest

import utils
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]

ONE = ["ckpt.step=20"]
TWO = ["ckpt.steps=[10, 20]"]
SCRIPTS = {
    "att_maps": TWO,
    "compare_nuc_bert": ONE,
    "copy_check": TWO,
    "embed": TWO,
    "ood": ONE,
    "patch": ONE,
    "probe": ONE,
    "switch_models": ["ckpt.pre_step=10", "ckpt.post_step=20"],
    "uniform_ablation": [*ONE, "ablation.heads=[[0, 0]]"],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_too_many_positions_is_refused_before_writing(name, tiny_run, tmp_path):
    run, _ = tiny_run
    module = importlib.import_module(name)
    out = tmp_path / "out"
    cfg = utils.load_config(
        typing.get_type_hints(module.main)["cfg"],
        ROOT / "configs" / f"{name}.yaml",
        [f"ckpt.run={run}", *SCRIPTS[name], f"out_dir={out}", "device=cpu"]
        + ["data.m=30", "data.n=30"],  # 900 positions; the tiny model has 64
    )
    previous = out / getattr(cfg, "exp_type", "") / "config.yaml"
    previous.parent.mkdir(parents=True)
    previous.write_text("a previous run's config\n")
    with pytest.raises(UserError, match="position"):
        module.main(cfg)
    assert previous.read_text() == "a previous run's config\n"
    assert [p.name for p in previous.parent.iterdir()] == ["config.yaml"]
