"""Train one component from scratch while the rest of a trained model stays fixed (paper Fig. 8).

    python3 train_embed.py --config configs/train_embed.yaml
    python3 train_embed.py --config configs/train_embed.yaml --groups=[position_embeddings]
    python3 train_embed.py --config configs/train_embed.yaml --plot_only=true

For each group in `groups`, every parameter is loaded from a final checkpoint (`ckpt`) and frozen
(requires_grad False, and not given to Adam) except the group's, which are re-initialised the way
the model initialises them and then trained with train.py's own loop (Trainer and
fit: the same logging, checkpoints, drop detection and W&B). Each group writes train.py's
outputs (config.yaml, metrics.jsonl, loss.png, step_NNNNNN.pt, summary.json) into
`out_dir/<group>/`; the top folder gets config.yaml, summary.json, table.md and compare.png/.pdf:
every group's loss beside the full training run's (ckpt.run/metrics.jsonl).

Groups (layer indices 0-based):
    token_embeddings     backbone.embeddings.word_embeddings (the MASK row stays zero)
    position_embeddings  backbone.embeddings.position_embeddings
    embedding_layernorm  backbone.embeddings.LayerNorm
    attention            backbone.encoder.layer.{i}.attention (Q, K, V, output, its LayerNorm)
    mlp                  backbone.encoder.layer.{i}.intermediate and .output (and its LayerNorm)
    read_out             read_out (PyTorch's default Linear init, as the model builds it)

The model and the data come from the checkpoint; this config sets only how to train. The paper:
no plateau for token embeddings or MLPs; positional embeddings alone drop just before step 40,000;
every other component drops earlier than full training.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from analysis import CkptSection, load_from_section, trained_data_config
from model import MatrixBert, check_fits
from trainer import TrainConfig, Trainer, TrainSection, fit
from utils.config import UserError, cli, opt, repo_relative, resolve_path
from utils.device import choose_device, seed_everything
from utils.drop import detect_drop
from utils.plots import plot_style, pyplot, save_figure
from utils.results import Table, prepare_output, write_results
from utils.runs import prepare_run_dir, read_metrics
from utils.tracking import TrainWandbConfig

GROUPS = {  # group -> pattern of the module names it covers (re.fullmatch)
    "token_embeddings": r"backbone\.embeddings\.word_embeddings",
    "position_embeddings": r"backbone\.embeddings\.position_embeddings",
    "embedding_layernorm": r"backbone\.embeddings\.LayerNorm",
    "attention": r"backbone\.encoder\.layer\.\d+\.attention",
    "mlp": r"backbone\.encoder\.layer\.\d+\.(intermediate|output)",
    "read_out": r"read_out",
}
FULL = "full training"  # the label of ckpt.run's own curve

# train.py's `train` section, less the options this script sets at the top level (`seed`,
# `device`) or per group (`out_dir`): same names, defaults, help strings and checks.
_TOP_LEVEL = ("seed", "device", "out_dir")
_HINTS = typing.get_type_hints(TrainSection)
LoopSection = dataclasses.make_dataclass(
    "LoopSection",
    [
        (
            f.name,
            _HINTS[f.name],
            field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
        )
        for f in dataclasses.fields(TrainSection)
        if f.name not in _TOP_LEVEL
    ],
)
LoopSection.__module__ = __name__


@dataclass
class TrainEmbedConfig:
    groups: list[str] = opt(list(GROUPS), "components to train, one run each")
    plot_only: bool = opt(False, "train nothing; redraw the comparison from the runs in out_dir")
    seed: int = opt(0, "seed for the re-initialisation and the data (the same for every group)")
    device: str = opt("auto", "auto (cuda, mps, cpu) or a torch device name")
    out_dir: str = opt("runs/train_embed", "output folder; each group's run in out_dir/<group>/")
    ckpt: CkptSection = field(default_factory=CkptSection)
    train: LoopSection = field(default_factory=LoopSection)
    wandb: TrainWandbConfig = field(default_factory=TrainWandbConfig)

    def __post_init__(self) -> None:
        check_groups(self.groups)
        TrainSection(**dataclasses.asdict(self.train))  # train.py's checks of the values

    def finalize(self, config_path: Path | None = None) -> None:
        if self.wandb.name is None:
            self.wandb.name = Path(config_path).stem if config_path else "train_embed"


def check_groups(groups: list[str]) -> None:
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups or len(set(groups)) != len(groups):
        what = f"unknown group '{unknown[0]}'" if unknown else "'groups' must be distinct, ≥ 1"
        raise UserError(f"{what} (valid: {', '.join(GROUPS)})")


# ----------------------------------------------------------------------------------------------
# Groups: which parameters, re-initialising and freezing them


def group_modules(model: MatrixBert, group: str) -> list[tuple[str, torch.nn.Module]]:
    """The outermost modules of `group`, by name."""
    pattern = re.compile(GROUPS[group])
    return [(name, mod) for name, mod in model.named_modules() if pattern.fullmatch(name)]


def group_parameter_names(model: MatrixBert, group: str) -> list[str]:
    prefixes = tuple(f"{name}." for name, _ in group_modules(model, group))
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


@torch.no_grad()
def reinitialize(model: MatrixBert, group: str) -> None:
    """Fresh weights for `group`, drawn as the model draws them when it is built: BertModel's
    `_init_weights` for the encoder (N(0, std) weights, zero biases, LayerNorm 1 / 0, the padding
    row zero), PyTorch's default for the read-out."""
    for name, module in group_modules(model, group):
        if name == "read_out":
            module.reset_parameters()
        else:
            module.apply(model.backbone._init_weights)


def freeze_all_but(model: MatrixBert, names: list[str]) -> list[torch.nn.Parameter]:
    """requires_grad only for `names`; returns those parameters (what Adam may update)."""
    chosen = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return [p for name, p in model.named_parameters() if name in chosen]


def group_train_config(cfg: TrainEmbedConfig, group: str, model: MatrixBert, ckpt: dict):
    """train.py's config for one group: the checkpoint's data and model, this script's loop."""
    data_cfg = trained_data_config(ckpt)
    check_fits(model.config, data_cfg.vocab_size, data_cfg.max_tokens)
    section = TrainSection(
        **dataclasses.asdict(cfg.train),
        seed=cfg.seed,
        device=cfg.device,
        out_dir=str(Path(cfg.out_dir) / group),
    )
    name = f"{cfg.wandb.name or 'train_embed'}_{group}"
    return TrainConfig(
        data=data_cfg,
        model=dataclasses.replace(model.config),
        train=section,
        wandb=dataclasses.replace(cfg.wandb, name=name),
    )


def train_group(cfg: TrainEmbedConfig, group: str) -> dict:
    """Load, re-initialise `group`, freeze the rest, train with fit; check the frozen part."""
    device = choose_device(cfg.device)
    model, ckpt = load_from_section(cfg.ckpt, device)
    tcfg = group_train_config(cfg, group, model, ckpt)
    out_dir, resume_from = prepare_run_dir(tcfg)
    seed_everything(cfg.seed)
    reinitialize(model, group)
    names = group_parameter_names(model, group)
    params = freeze_all_but(model, names)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = Trainer(tcfg, model=model, params=params)
    n_params = sum(p.numel() for p in params)
    print(f"{group}: training {n_params:,} parameters, writing to {repo_relative(out_dir)}")
    summary = fit(tcfg, trainer, out_dir, resume_from)
    unchanged = all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    return {
        **summary,
        "trained_params": sum(p.numel() for p in params),
        "frozen_unchanged": unchanged,
    }


# ----------------------------------------------------------------------------------------------
# Comparison with full training


def full_run_records(cfg: TrainEmbedConfig) -> list[dict]:
    """The full training run's logged curve (empty for a checkpoint file without its run)."""
    if cfg.ckpt.path:
        return []
    return read_metrics(resolve_path(cfg.ckpt.run) / "metrics.jsonl")


def read_group_run(cfg: TrainEmbedConfig, group: str) -> tuple[list[dict], dict]:
    run = resolve_path(cfg.out_dir) / group
    records = read_metrics(run / "metrics.jsonl")
    if not records or not (run / "summary.json").is_file():
        raise UserError(f"no finished run for group '{group}' in {run}; train it first")
    return records, json.loads((run / "summary.json").read_text())


def plot_comparison(curves: dict[str, tuple[list[dict], int | None]], out_dir: Path) -> None:
    """compare.png/.pdf: each run's loss (label -> (records, drop step)), log scale; a dot marks
    where a drop starts (detect_drop). The full training run is dashed black."""
    plt = pyplot()

    with plt.rc_context(plot_style()):
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for label, (records, drop) in curves.items():
            style = {"color": "k", "ls": "--"} if label == FULL else {}
            steps, losses = [r["step"] for r in records], [r["loss"] for r in records]
            (line,) = ax.plot(steps, losses, lw=1.2, label=label.replace("_", " "), **style)
            if drop is not None:
                ax.plot(drop, losses[steps.index(drop)], "o", ms=5, color=line.get_color())
        ax.set(
            xlabel="step",
            ylabel="MSE (all entries)",
            yscale="log",
            title="one component trained, the rest fixed (dot: drop starts)",
        )
        ax.legend(loc="upper right", fontsize=8)
        save_figure(fig, out_dir, "compare", pdf=True)
        plt.close(fig)


def summary_row(name: str, s: dict) -> dict:
    return {
        "run": name,
        "trained params": s.get("trained_params"),
        "plateau loss": s.get("plateau_loss"),
        "drop step": s.get("drop_step"),
        "final step": s.get("final_step"),
        "final loss": s.get("final_loss"),
        "frozen unchanged": s.get("frozen_unchanged"),
    }


def main(cfg: TrainEmbedConfig) -> dict:
    check_groups(cfg.groups)
    if not cfg.plot_only:  # a missing checkpoint or a clashing run folder: stop before training
        model, ckpt = load_from_section(cfg.ckpt)
        for group in cfg.groups:
            prepare_run_dir(group_train_config(cfg, group, model, ckpt))
        del model, ckpt
    out_dir = prepare_output(cfg.out_dir, cfg)
    full = full_run_records(cfg)
    full_summary, curves = None, {}
    if full:
        drop = detect_drop([r["step"] for r in full], [r["loss"] for r in full])
        full_summary = {**drop, "final_step": full[-1]["step"], "final_loss": full[-1]["loss"]}
        curves[FULL] = (full, drop["drop_step"])
    groups = {}
    for group in cfg.groups:
        trained = None if cfg.plot_only else train_group(cfg, group)
        records, saved = read_group_run(cfg, group)
        groups[group] = {**saved, **(trained or {})}
        curves[group] = (records, groups[group]["drop_step"])
    plot_comparison(curves, out_dir)
    summary = {"full_training": full_summary, "groups": groups}
    rows = [summary_row(g, s) for g, s in groups.items()]
    rows += [summary_row(FULL, full_summary)] if full_summary else []
    table = Table(rows)
    write_results(out_dir, summary, {"table.md": [table]})
    print(f"{table.markdown()}outputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    cli(main, TrainEmbedConfig, __doc__, "configs/train_embed.yaml")
