"""Switch components between a pre-drop and a post-drop checkpoint: which part carries the skill?

    python3 switch_models.py --config configs/switch_models.yaml
    python3 switch_models.py --config configs/switch_models.yaml --switch.groups=[att,mlp]

The authors' src/switch_models.py. A model is built from two checkpoints
of one run: a group of parameters comes from the source checkpoint, everything else from the base.
Directions (`switch.directions`):
    pre_to_post  base = the post-drop model (`ckpt.post_step`), the group from the pre-drop one
                 (`ckpt.pre_step`) — the authors' `pre-to-post`;
    post_to_pre  base = the pre-drop model, the group from the post-drop one.
Groups, by regular expressions on our parameter names (`backbone.` = the encoder, see
modeling_bert.py; a name is in a group when the pattern matches anywhere in it):
    att          attention.self.(query|key|value)    Q/K/V (the authors' `att`)
    mlp          every name without "attention"      all outside attention: embeddings, MLPs,
                                                     the blocks' final LayerNorms, the read-out
                                                     (the authors' `mlp`)
    qkv          the same as att, under a plain name
    attn_output  attention.output.dense              the attention output projection
    attention    every name with "attention"         Q/K/V, output projection, its LayerNorm
    ffn          intermediate.dense | output.dense (outside attention)   the MLPs alone
    embeddings   word_embeddings | position_embeddings
    layernorm    LayerNorm                           every LayerNorm
    read_out     read_out.                           the linear read-out
    all          every parameter                     (a check: gives the source model)
Reported: MSE over all, observed and hidden entries of the two models and of every combination, on
the same `data.num_samples` fresh matrices.

Writes to `out_dir`: switch_models.md, summary.json, config.yaml.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from analysis import AnalysisConfig, PrePostCkptSection, open_analysis
from measures import LOSSES, evaluate
from model import MatrixBert
from utils.config import UserError, cli, opt, repo_relative
from utils.results import Table, prepare_output, render, write_results

GROUPS = {
    "att": r"attention\.self\.(query|key|value)\.",
    "mlp": r"^(?!.*attention)",
    "qkv": r"attention\.self\.(query|key|value)\.",
    "attn_output": r"attention\.output\.dense\.",
    "attention": r"attention",
    "ffn": r"intermediate\.dense\.|layer\.\d+\.output\.dense\.",
    "embeddings": r"(word|position)_embeddings\.",
    "layernorm": r"LayerNorm\.",
    "read_out": r"^read_out\.",
    "all": r".",
}
DIRECTIONS = ("pre_to_post", "post_to_pre")


@dataclass
class SwitchSection:
    groups: list[str] = opt(list(GROUPS), f"groups to switch, one at a time: {', '.join(GROUPS)}")
    directions: list[str] = opt(list(DIRECTIONS), "pre_to_post and/or post_to_pre")

    def __post_init__(self) -> None:
        for g in self.groups:
            if g not in GROUPS:
                raise UserError(f"unknown group '{g}' (valid: {', '.join(GROUPS)})")
        for d in self.directions:
            if d not in DIRECTIONS:
                raise UserError(f"unknown direction '{d}' (valid: {', '.join(DIRECTIONS)})")


@dataclass
class Config(AnalysisConfig):
    script = "switch_models"  # outputs: results/<run folder name>/switch_models

    ckpt: PrePostCkptSection = field(default_factory=PrePostCkptSection)
    switch: SwitchSection = field(default_factory=SwitchSection)


# ----------------------------------------------------------------------------------------------


def group_keys(names: list[str], groups: list[str]) -> list[str]:
    """The parameter names in any of `groups` (see GROUPS)."""
    patterns = [re.compile(GROUPS[g]) for g in groups]
    return [k for k in names if any(p.search(k) for p in patterns)]


def switched_state(base: dict, source: dict, keys: list[str]) -> dict:
    """`base`'s state dict with the entries `keys` taken from `source`."""
    keys = set(keys)
    return {k: (source[k] if k in keys else v).clone() for k, v in base.items()}


def build(model: MatrixBert, state: dict) -> MatrixBert:
    """A copy of `model` holding `state`."""
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out.eval()


def main(cfg: Config) -> dict:
    run = open_analysis(cfg, data_from=1)  # the post-drop checkpoint's data
    models = {k: (one.model, one.ckpt) for k, one in zip(("pre", "post"), run.loaded)}
    if models["pre"][0].config != models["post"][0].config:
        raise UserError("the pre- and post-drop checkpoints have different model configs")
    steps = {k: ckpt.get("step") for k, (_, ckpt) in models.items()}
    names = list(models["post"][0].state_dict())
    for group in cfg.switch.groups:
        if not group_keys(names, [group]):
            raise UserError(f"group '{group}' matches no parameter of this model")
    out_dir = prepare_output(cfg.out_dir, cfg)
    batches = run.batches()
    rows = []
    for k in ("pre", "post"):
        row = {"model": f"{k} (step {steps[k]})", "base": k, "group": None, "from": None}
        rows.append({**row, "params": 0, **evaluate(models[k][0], batches)})
    for direction in cfg.switch.directions:
        src, base = direction.split("_to_")
        for group in cfg.switch.groups:
            keys = group_keys(names, [group])
            state = switched_state(models[base][0].state_dict(), models[src][0].state_dict(), keys)
            params = sum(models[base][0].state_dict()[k].numel() for k in keys)
            row = {"model": f"{base} with {group} from {src}", "base": base, "group": group}
            losses = evaluate(build(models[base][0], state), batches)
            rows.append({**row, "from": src, "params": params, **losses})
    summary = {"steps": steps, "groups": {g: GROUPS[g] for g in cfg.switch.groups}, "rows": rows}
    document = [
        f"MSE over all (loss), observed (loss_obs) and hidden (loss_mask) entries; pre = step "
        f"{steps['pre']}, post = step {steps['post']}; `params`: parameters switched.",
        Table(rows, ["model", "params", *LOSSES]),
    ]
    print(render(document))
    write_results(out_dir, summary, {"switch_models.md": document}, cfg, "switch_models")
    print(f"outputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    cli(main, Config, __doc__, "configs/switch_models.yaml")
