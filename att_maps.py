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
          and (6, 5), 0-based; null takes that example scaled to the matrix: rows m//2 and m − 1,
          keeping columns 1 and n − 2; `keep_at: null` with other hidden rows keeps none);
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
the fraction observed (the `chance` row). Each head gets a role by measures.ROLE_RULE: row,
column or self when more than half of its attention goes there, otherwise other.

The paper's claim, on a post-drop checkpoint: (layer 2, head 1) attends within rows and (layer 2,
head 2) within columns, 1-based. Heads are interchangeable at initialisation, so in another run
those indices are arbitrary heads: the script reports the row and column heads this model has, by
role, and, separately, the shares of the heads the authors name (`att_maps.row_head`,
`att_maps.col_head`, 0-based; their indices, kept for comparison).

Writes to `out_dir`: att_maps_stepNNNNNN.png/.pdf (one grid per checkpoint, one colour scale, the
role of each head marked; layers and heads 1-based on the figure), heads.md (shares and roles,
0-based), summary.json (with each checkpoint's mean pattern, the figure's numbers) and
config.yaml. `scripts/redraw.py` redraws the figures from summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from analysis import AnalysisConfig, StepsCkptSection, check_heads, open_analysis
from data import MatrixSampler, structured_observed
from measures import ROLE_RULE, ROLES, SHARES, attention_summary, chance_shares, heads_with_role
from utils.config import UserError, cli, opt, repo_relative
from utils.device import seed_everything
from utils.plots import close_figure, plot_attention_grid, save_figure
from utils.results import Table, prepare_output, write_results

MASKS = ("none", "row", "col")


@dataclass
class AttMapsSection:
    mask: str = opt("none", "none: random masks; row / col: one structured mask for all", MASKS)
    hidden_lines: list[int] | None = opt(
        None, "row/col masks: the rows (or columns) hidden, 0-based; null: m//2 and m − 1"
    )
    keep_at: list[int] | None = opt(
        None,
        "row/col masks: per hidden line, the column (or row) kept observed; []: none; "
        "null: 1 and n − 2 with the default hidden_lines, none with others",
    )
    row_head: list[int] = opt(
        [1, 0], "[layer, head], 0-based, the authors' row head; []: do not report"
    )
    col_head: list[int] = opt(
        [1, 1], "[layer, head], 0-based, the authors' column head; []: do not report"
    )


@dataclass
class Config(AnalysisConfig):
    script = "att_maps"  # outputs: results/<run folder name>/att_maps

    ckpt: StepsCkptSection = field(default_factory=StepsCkptSection)
    att_maps: AttMapsSection = field(default_factory=AttMapsSection)


# ----------------------------------------------------------------------------------------------
# Masks and scores


def mask_pattern(section: AttMapsSection, m: int, n: int) -> torch.Tensor | None:
    """The structured visibility [m, n] for `row` / `col` masks, None for `none`."""
    if section.mask == "none":
        return None
    along, across = (m, n) if section.mask == "row" else (n, m)
    lines, keep = section.hidden_lines, section.keep_at
    default = sorted({along // 2, along - 1})  # the authors' 7×7 example, 3 and 6, scaled
    if lines is None:
        lines = default
    if keep is None:
        keep = [1 % across, (across - 2) % across][: len(lines)] if lines == default else []
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


# ----------------------------------------------------------------------------------------------
# Per checkpoint: shares, roles, the authors' heads


def head_rows(step: int, shares: dict[str, torch.Tensor], roles: list[list[str]]) -> list[dict]:
    layers, heads = shares["row"].shape
    return [
        {
            "step": step,
            "layer": i,
            "head": h,
            **{k: float(shares[k][i, h]) for k in SHARES},
            "role": roles[i][h],
        }
        for i in range(layers)
        for h in range(heads)
    ]


def by_role(roles: list[list[str]]) -> dict[str, list[list[int]]]:
    """{role: [[layer, head], ...]} (0-based) for the row, column and self heads."""
    return {r: [list(p) for p in heads_with_role(roles, r)] for r in ROLES if r != "other"}


def authors_head(pair: list[int], model, key: str) -> tuple[int, int] | None:
    """The authors' head `pair` checked against this model (None for []: not reported)."""
    if not pair:
        return None
    try:
        return check_heads([pair], model.config, key)[0]
    except UserError as e:
        raise UserError(f"{e} (the authors' index; {key}=[] skips it)") from None


def claim_numbers(shares: dict, chance: dict, row_head, col_head) -> dict:
    """The row and column shares of the heads the authors name (their indices), beside chance."""
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
# Figures, from the summary alone (scripts/redraw.py uses this too)


def draw_figures(summary: dict, out_dir: Path) -> tuple[list[Path], list[str]]:
    """One grid per checkpoint of summary.json: (files written, notes on what was not drawn)."""
    paths, notes = [], []
    observed = summary.get("observed_pattern")
    observed = torch.tensor(observed, dtype=torch.bool) if observed is not None else None
    for c in summary["checkpoints"]:
        if c.get("mean_pattern") is None:
            notes.append(f"step {c['step']}: the mean pattern was not saved; figure left as is")
            continue
        fig = plot_attention_grid(
            torch.tensor(c["mean_pattern"]),
            c["m"],
            c["n"],
            f"step {c['step']}, {c['m']}×{c['n']} matrices, mask: {summary['mask']}",
            observed,
            c.get("roles"),
        )
        paths += save_figure(fig, out_dir, f"att_maps_step{c['step']:06d}", pdf=True)
        close_figure(fig)
    return paths, notes


# ----------------------------------------------------------------------------------------------


def print_shares(step: int, shares: dict, roles: list[list[str]], losses: dict) -> None:
    layers, heads = shares["row"].shape
    fmt = {k: "—" if v is None else f"{v:.4g}" for k, v in losses.items()}
    print(
        f"step {step}: MSE all {fmt['loss']}, observed {fmt['loss_obs']}, hidden {fmt['loss_mask']}"
    )
    print("  row/col shares and role (r, c, s: row, column, self head), layer × head (0-based)")
    print("  layer " + " ".join(f"{h:>11}" for h in range(heads)))
    for i in range(layers):
        cells = " ".join(
            f"{shares['row'][i, h]:.2f}/{shares['col'][i, h]:.2f} {roles[i][h][0]}"
            if roles[i][h] != "other"
            else f"{shares['row'][i, h]:.2f}/{shares['col'][i, h]:.2f}  "
            for h in range(heads)
        )
        print(f"  {i:>5}  {cells}")


def main(cfg: Config) -> dict:
    section = cfg.att_maps
    run = open_analysis(cfg)
    checked = []  # every input checked before anything is written
    for one in run.loaded:
        row_head, col_head = (
            authors_head(pair, one.model, f"att_maps.{key}")
            for key, pair in (("row_head", section.row_head), ("col_head", section.col_head))
        )
        observed = mask_pattern(section, one.data.m, one.data.n)
        checked.append((one, observed, row_head, col_head))
    out_dir = prepare_output(cfg.out_dir, cfg)
    summary: dict = {"mask": section.mask, "role_rule": ROLE_RULE, "checkpoints": []}
    table = []
    for (one, observed, row_head, col_head), asked in zip(checked, cfg.ckpt.sections()):
        data_cfg, model = one.data, one.model
        m, n = data_cfg.m, data_cfg.n
        seed_everything(cfg.seed)
        sampler = MatrixSampler(data_cfg, run.device, seed=cfg.seed)
        batches = sampler.sample_many(
            cfg.data.num_samples, cfg.data.batch_size, m, n, observed=observed
        )
        result = attention_summary(model, batches, mean_pattern=True)
        step = int(one.ckpt.get("step", asked.step or 0))
        chance = chance_shares(m, n, result["observed_fraction"])
        shares, roles = result["shares"], result["roles"]
        claim = claim_numbers(shares, chance, row_head, col_head)
        rows = head_rows(step, shares, roles)
        table += rows
        summary["checkpoints"].append(
            {
                "step": step,
                "m": m,
                "n": n,
                **result["losses"],
                "chance": chance,
                "heads_by_role": by_role(roles),
                "roles": roles,
                "authors_heads": claim,
                "heads": rows,
                "mean_pattern": [
                    [[[round(v, 5) for v in q] for q in h] for h in layer]
                    for layer in result["pattern"].tolist()
                ],
            }
        )
        if observed is not None:
            summary["observed_pattern"] = observed.int().tolist()
        print_shares(step, shares, roles, result["losses"])
        found = by_role(roles)
        print(
            "  by role (0-based [layer, head]): "
            + "; ".join(f"{r} heads {found[r] or 'none'}" for r in ("row", "column", "self"))
        )
        for key, c in claim.items():
            kind = "rows" if key == "row_head" else "columns"
            print(
                f"  the authors' layer {c['layer'] + 1} head {c['head'] + 1} (1-based), theirs "
                f"within {kind}: row {c['row']:.3f} (chance {c['chance_row']:.3f}), "
                f"col {c['col']:.3f} (chance {c['chance_col']:.3f})"
            )
    draw_figures(summary, out_dir)
    chance_rows = [
        {"step": c["step"], "layer": "chance", "head": "—", **c["chance"], "role": "—"}
        for c in summary["checkpoints"]
    ]
    heads = [
        "Share of each query's attention to other positions in its row, its column, itself, and "
        "to observed / hidden keys, averaged over queries and matrices, and each head's role "
        f"({ROLE_RULE}). Layers and heads 0-based (the paper's layer 2 head 1 is layer 1 head "
        "0). `chance`: uniform attention.",
        Table(table + chance_rows, ["step", "layer", "head", *SHARES, "role"]),
    ]
    write_results(out_dir, summary, {"heads.md": heads}, cfg, "att_maps")
    print(f"outputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    cli(main, Config, __doc__, "configs/att_maps.yaml", redraw=draw_figures)
