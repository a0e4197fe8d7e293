"""Attention maps before and after the drop: every head's attention pattern, averaged over a batch.

    python3 att_maps.py --config configs/att_maps.yaml
    python3 att_maps.py --config configs/att_maps.yaml --att_maps.mask=row --ckpt.steps=[50000]

Reproduces paper Fig. 4 (the layers × heads grid at steps 4000, 14000, 16000 and 20000) and the
appendix's maps under a structured mask. For each checkpoint, `hook_pattern` of every layer is
cached on `data.num_samples` fresh matrices and averaged over them.

Masks (`att_maps.mask`):
    none  every matrix gets its own random mask (each entry hidden with probability p_mask);
    row   one mask for the whole batch: rows `hidden_lines` are hidden, except the entry at
          column `keep_at[k]` of hidden row k (the authors' example: rows 3 and 6, keeping (3, 1)
          and (6, 5), 0-based);
    col   the same with columns: column `hidden_lines[k]` is hidden except row `keep_at[k]`.
A structured mask is drawn beside the maps.

Numbers per head a reader can check against the pictures: for each query position, the share of its
attention that goes to
    row       other positions in its own row,
    col       other positions in its own column,
    self      itself,
    observed  observed positions (itself included when observed),
    hidden    hidden positions (observed + hidden = 1),
averaged over query positions and matrices. Uniform attention would give (n−1)/T, (m−1)/T, 1/T and
the fraction observed (the `chance` row). The paper's claim, on a post-drop checkpoint: (layer 2,
head 1) attends within rows and (layer 2, head 2) within columns, 1-based; `att_maps.row_head` and
`att_maps.col_head` name those heads 0-based and the script prints their shares.

Writes to `out_dir`: att_maps_stepNNNNNN.png/.pdf (one grid per checkpoint; layers and heads
1-based on the figure), heads.md (the shares, 0-based), summary.json and config.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

import utils
from data import Batch, MatrixSampler, structured_observed
from model import (
    MatrixBert,
    analysis_data_config,
    batch_losses,
    checkpoint_path,
    load_from_section,
)
from modeling_bert import act_name, check_heads
from utils import AnalysisData, StepsCkptSection, UserError, opt

MASKS = ("none", "row", "col")
SHARES = ("row", "col", "self", "observed", "hidden")


@dataclass
class AttMapsSection:
    mask: str = opt("none", "none: random masks; row / col: one structured mask for all", MASKS)
    hidden_lines: list[int] = opt([3, 6], "row/col masks: the rows (or columns) hidden, 0-based")
    keep_at: list[int] = opt(
        [1, 5], "row/col masks: per hidden line, the column (or row) kept observed; []: none"
    )
    row_head: list[int] = opt([1, 0], "[layer, head], 0-based, said to attend within rows")
    col_head: list[int] = opt([1, 1], "[layer, head], 0-based, said to attend within columns")


@dataclass
class Config:
    seed: int = opt(0, "seed for the sampled matrices (the same for every checkpoint)")
    device: str = opt("auto", "auto (cuda, mps, cpu) or a torch device name")
    out_dir: str = opt("results/att_maps", "output folder; relative paths from the repo root")
    ckpt: StepsCkptSection = field(default_factory=StepsCkptSection)
    data: AnalysisData = field(default_factory=AnalysisData)
    att_maps: AttMapsSection = field(default_factory=AttMapsSection)


# ----------------------------------------------------------------------------------------------
# Masks and scores


def mask_pattern(section: AttMapsSection, m: int, n: int) -> torch.Tensor | None:
    """The structured visibility [m, n] for `row` / `col` masks, None for `none`."""
    if section.mask == "none":
        return None
    along, across = (m, n) if section.mask == "row" else (n, m)
    lines, keep = section.hidden_lines, section.keep_at
    for i in lines:
        if not 0 <= i < along:
            raise UserError(f"'att_maps.hidden_lines' has {i}, outside 0..{along - 1}")
    if keep and len(keep) != len(lines):
        raise UserError("'att_maps.keep_at' needs one entry per hidden line, or none")
    for j in keep:
        if not 0 <= j < across:
            raise UserError(f"'att_maps.keep_at' has {j}, outside 0..{across - 1}")
    if section.mask == "row":
        return structured_observed(m, n, hidden_rows=lines, keep=list(zip(lines, keep)))
    return structured_observed(m, n, hidden_cols=lines, keep=list(zip(keep, lines)))


def attention_shares(
    pattern: torch.Tensor, observed: torch.Tensor, m: int, n: int
) -> dict[str, torch.Tensor]:
    """Per head [H], the share of a query's attention to its row, column, itself, observed and
    hidden keys, averaged over queries and the batch. `pattern` [B, H, T, T] (rows sum to 1),
    `observed` [B, T] with T = m·n row-major."""
    t = m * n
    pos = torch.arange(t, device=pattern.device)
    same_row = pos[:, None] // n == pos[None, :] // n
    same_col = pos[:, None] % n == pos[None, :] % n
    eye = torch.eye(t, dtype=torch.bool, device=pattern.device)
    p = pattern.float()
    obs = observed.to(p.dtype)
    to_obs = torch.einsum("bhqk,bk->bhq", p, obs)
    per_query = {
        "row": (p * (same_row & ~eye)).sum(-1),
        "col": (p * (same_col & ~eye)).sum(-1),
        "self": p.diagonal(dim1=-2, dim2=-1),
        "observed": to_obs,
        "hidden": p.sum(-1) - to_obs,
    }
    return {k: v.mean(dim=(0, 2)) for k, v in per_query.items()}


def chance_shares(m: int, n: int, observed_fraction: float) -> dict[str, float]:
    """What uniform attention (1/T to every key) would score."""
    t = m * n
    return {
        "row": (n - 1) / t,
        "col": (m - 1) / t,
        "self": 1 / t,
        "observed": observed_fraction,
        "hidden": 1 - observed_fraction,
    }


# ----------------------------------------------------------------------------------------------
# Running a checkpoint


@torch.no_grad()
def mean_patterns(model: MatrixBert, batches: list[Batch], m: int, n: int) -> dict:
    """Mean pattern [L, H, T, T], the shares per layer and head, and the model's losses."""
    layers = model.config.num_hidden_layers
    names = [act_name("pattern", i) for i in range(layers)]
    total = None
    shares = {k: torch.zeros(layers, model.config.num_attention_heads) for k in SHARES}
    preds = []
    count = 0
    for batch in batches:
        pred, cache = model.run_with_cache(batch.input_ids, names)
        preds.append(pred)
        summed = torch.stack([cache[name].float().sum(0) for name in names])  # [L, H, T, T]
        total = summed if total is None else total + summed
        b = batch.input_ids.shape[0]
        for i, name in enumerate(names):
            for k, v in attention_shares(cache[name], batch.observed, m, n).items():
                shares[k][i] += b * v.cpu()
        count += b
    observed = torch.cat([b.observed for b in batches])
    return {
        "pattern": (total / count).cpu(),
        "shares": {k: v / count for k, v in shares.items()},
        "losses": batch_losses(preds, batches),
        "observed_fraction": observed.float().mean().item(),
    }


def head_rows(step: int, shares: dict[str, torch.Tensor]) -> list[dict]:
    layers, heads = shares["row"].shape
    return [
        {"step": step, "layer": i, "head": h, **{k: float(shares[k][i, h]) for k in SHARES}}
        for i in range(layers)
        for h in range(heads)
    ]


def claim_numbers(shares: dict, chance: dict, row_head, col_head) -> dict:
    """The row and column shares of the heads the paper names, beside chance."""
    out = {}
    for key, pair in (("row_head", row_head), ("col_head", col_head)):
        if pair is None:
            continue
        layer, head = pair
        out[key] = {
            "layer": layer,
            "head": head,
            "row": float(shares["row"][layer, head]),
            "col": float(shares["col"][layer, head]),
            "chance_row": chance["row"],
            "chance_col": chance["col"],
        }
    return out


# ----------------------------------------------------------------------------------------------
# Figure


def plot_grid(
    pattern: torch.Tensor,
    n: int,
    observed: torch.Tensor | None,
    title: str,
    out_dir: Path,
    stem: str,
) -> list[Path]:
    """The layers × heads grid of mean patterns (1-based labels), the structured mask beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads, t, _ = pattern.shape
    extra = 1 if observed is not None else 0
    with plt.rc_context({**utils.plot_style(), "axes.grid": False}):
        fig, axes = plt.subplots(
            layers,
            heads + extra,
            figsize=(1.9 * (heads + extra), 1.9 * layers + 0.8),
            squeeze=False,
        )
        for i in range(layers):
            for h in range(heads):
                ax = axes[i, h]
                ax.imshow(pattern[i, h].numpy(), cmap="viridis", interpolation="nearest")
                for edge in range(n, t, n):  # row boundaries of the matrix
                    ax.axhline(edge - 0.5, color="w", lw=0.3, alpha=0.5)
                    ax.axvline(edge - 0.5, color="w", lw=0.3, alpha=0.5)
                ax.set_xticks([0, t - 1])
                ax.set_yticks([0, t - 1])
                ax.tick_params(
                    labelsize=7, top=True, labeltop=True, bottom=False, labelbottom=False
                )
                if i == 0:
                    ax.set_title(f"head {h + 1}", pad=14)
                if h == 0:
                    ax.set_ylabel(f"layer {i + 1}")
            if extra:
                axes[i, heads].axis("off")
        if observed is not None:
            ax = axes[0, heads]
            ax.axis("on")
            ax.imshow(observed.float().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title("mask (white = observed)", fontsize=8, pad=14)
            ax.set_xticks(range(observed.shape[1]))
            ax.set_yticks(range(observed.shape[0]))
            ax.tick_params(labelsize=6)
            ax.set_xlabel("column (0-based, as in the config)", fontsize=6)
            ax.set_ylabel("row (0-based)", fontsize=6)
        fig.suptitle(
            f"{title}\nmean attention pattern (query ↓, key →; positions i·n + j, 0-based); "
            "layers and heads numbered from 1 as in the paper; each panel on its own colour scale",
            fontsize=9,
        )
        fig.tight_layout()
        paths = utils.save_figure(fig, out_dir, stem, pdf=True)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------


def print_shares(step: int, shares: dict, losses: dict) -> None:
    layers, heads = shares["row"].shape
    fmt = {k: "—" if v is None else f"{v:.4g}" for k, v in losses.items()}
    print(
        f"step {step}: MSE all {fmt['loss']}, observed {fmt['loss_obs']}, hidden {fmt['loss_mask']}"
    )
    print("  row/col shares, layer × head (0-based)")
    print("  layer " + " ".join(f"{h:>9}" for h in range(heads)))
    for i in range(layers):
        cells = " ".join(
            f"{shares['row'][i, h]:.2f}/{shares['col'][i, h]:.2f}" for h in range(heads)
        )
        print(f"  {i:>5}  {cells}")


def main(cfg: Config) -> dict:
    device = utils.choose_device(cfg.device)
    section = cfg.att_maps
    sections = cfg.ckpt.sections()
    for one in sections:  # every checkpoint exists before anything is loaded
        checkpoint_path(one)
    loaded = []  # every checkpoint loaded and checked against the config before anything is written
    for one in sections:
        model, ckpt = load_from_section(one, device)
        row_head, col_head = (
            check_heads([pair], model.config, f"att_maps.{key}")[0] if pair else None
            for key, pair in (("row_head", section.row_head), ("col_head", section.col_head))
        )
        data_cfg = analysis_data_config(ckpt, cfg.data, model)
        loaded.append((one, model, ckpt, data_cfg, row_head, col_head))
    out_dir = utils.prepare_output(cfg.out_dir, cfg)
    summary: dict = {"mask": section.mask, "checkpoints": []}
    table = []
    for one, model, ckpt, data_cfg, row_head, col_head in loaded:
        m, n = data_cfg.m, data_cfg.n
        observed = mask_pattern(section, m, n)
        utils.seed_everything(cfg.seed)
        sampler = MatrixSampler(data_cfg, device, seed=cfg.seed)
        batches = sampler.sample_many(
            cfg.data.num_samples, cfg.data.batch_size, m, n, observed=observed
        )
        result = mean_patterns(model, batches, m, n)
        step = int(ckpt.get("step", one.step or 0))
        chance = chance_shares(m, n, result["observed_fraction"])
        claim = claim_numbers(result["shares"], chance, row_head, col_head)
        rows = head_rows(step, result["shares"])
        table += rows
        summary["checkpoints"].append(
            {"step": step, **result["losses"], "chance": chance, "claim": claim, "heads": rows}
        )
        if observed is not None:
            summary["observed_pattern"] = observed.int().tolist()
        plot_grid(
            result["pattern"],
            n,
            observed,
            f"step {step}, {m}×{n} matrices, mask: {section.mask}",
            out_dir,
            f"att_maps_step{step:06d}",
        )
        print_shares(step, result["shares"], result["losses"])
        for key, c in claim.items():
            kind = "rows" if key == "row_head" else "columns"
            print(
                f"  layer {c['layer'] + 1} head {c['head'] + 1} (1-based), said to attend within "
                f"{kind}: row {c['row']:.3f} (chance {c['chance_row']:.3f}), "
                f"col {c['col']:.3f} (chance {c['chance_col']:.3f})"
            )
    chance_rows = [
        {"step": c["step"], "layer": "chance", "head": "—", **c["chance"]}
        for c in summary["checkpoints"]
    ]
    text = (
        "Share of each query's attention to other positions in its row, its column, itself, and "
        "to observed / hidden keys, averaged over queries and matrices. Layers and heads 0-based "
        "(the paper's layer 2 head 1 is layer 1 head 0). `chance`: uniform attention.\n\n"
        + utils.markdown_table(table + chance_rows, ["step", "layer", "head", *SHARES])
    )
    utils.write_results(out_dir, summary, {"heads.md": text})
    print(f"outputs in {out_dir}")
    return summary


if __name__ == "__main__":
    utils.cli(main, Config, __doc__, "configs/att_maps.yaml")
