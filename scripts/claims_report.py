"""The tables, figures and verdicts of `python3 -m scripts.claims report OUT` (see claims.py).

Each claim's verdict counts seeds (k/N, N the seeds whose runs are there) by a rule written next
to it, from numbers outcomes.compare reads off each run: the drop (train.py's detector on
the total loss: `sudden` or not), L_mask on the plateau and at the end (medians), completion
(L_mask 8× below its plateau and still there at the end). A claim whose runs are missing says so.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from outcomes import BELOW, compare  # BELOW: completion, 8x (the CPU-miniature issue)
from utils.drop import detect_drop
from utils.files import atomic_write_text, write_json
from utils.plots import close_figure, plot_style, pyplot, save_figure
from utils.results import fmt, markdown_table
from utils.runs import read_metrics

SAME = 0.25  # "changes little": drop steps within 25 % of each other
CLOSE = 2.0  # OOD: "close to the nuclear norm" = BERT's hidden-entry MSE within 2× of it
RISE = 0.05  # probe: a mates R² that rises by more than this from the first to the last layer
FELL = 2.0  # Fig. 8 "no plateau": L_mask ends this far below its start without a late drop


def _runs(out: Path, claim: str, variant: str, seeds: list[int]) -> dict[int, list[dict]]:
    found = {}
    for seed in seeds:
        records = read_metrics(out / claim / f"{variant}_s{seed}" / "metrics.jsonl")
        if records:
            found[seed] = records
    return found


def _spread(values: list[float | None]) -> str:
    """median [min–max] of the values that exist, '—' for none."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return fmt(xs[0])
    return f"{fmt(statistics.median(xs))} [{fmt(min(xs))}–{fmt(max(xs))}]"


def _variant_row(name: str, rows: dict[int, dict]) -> dict:
    n = len(rows)
    sudden = [s for s, r in rows.items() if r["drop_kind"] == "sudden"]
    done = [s for s, r in rows.items() if r["complete"]]
    return {
        "variant": name,
        "seeds": n,
        "sudden drop": f"{len(sudden)}/{n}",
        "drop step": _spread([rows[s]["drop_step"] for s in sudden]),
        "final L_mask": _spread([r["final_loss_mask"] for r in rows.values()]),
        "ratio": _spread([r["ratio"] for r in rows.values()]),
        f"complete ({BELOW:g}×)": f"{len(done)}/{n}",
        "steps": _spread([r["steps"] for r in rows.values()]),
    }


def _smooth(values: list[float], k: int = 10) -> list[float]:
    return [statistics.median(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def _figure(title: str, panels: dict[str, dict[int, list[dict]]], key: str, out: Path, stem: str):
    """One panel per variant, every seed's (smoothed) curve of `key`, log scale."""
    plt = pyplot()
    names = [n for n, runs in panels.items() if runs]
    if not names:
        return
    with plt.rc_context(plot_style()):
        cols = min(4, len(names))
        rows = -(-len(names) // cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, sharey=True
        )
        for ax, name in zip(axes.flat, names):
            for seed, records in panels[name].items():
                steps = [r["step"] for r in records if key in r]
                ax.plot(steps, _smooth([r[key] for r in records if key in r]), lw=1, label=seed)
            ax.set(title=name, yscale="log", xlabel="step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        axes[0][0].set_ylabel(key)
        axes[0][0].legend(title="seed", fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        save_figure(fig, out, stem)
        close_figure(fig)


def _training_claim(out: Path, claim: str, variants: list[str], seeds: list[int]):
    """compare rows per variant (the base first), their table rows and the figure."""
    named = {"base": _runs(out, "base", "base", seeds)}
    for v in variants:
        named[v] = _runs(out, claim, v, seeds)
    rows = {v: {s: compare(r, below=BELOW) for s, r in runs.items()} for v, runs in named.items()}
    _figure(f"{claim}: L_mask of every seed", named, "loss_mask", out / claim, claim)
    return rows, [_variant_row(v, r) for v, r in rows.items() if r]


def _variants(out: Path, claim: str) -> list[str]:
    names = {p.name.rsplit("_s", 1)[0] for p in (out / claim).glob("*_s*") if p.is_dir()}
    return sorted(names, key=lambda n: (len(n), n))


def _base_model(out: Path, key: str) -> int | str:
    """A model setting of the base runs, from the first one's config.yaml ('?' where none is
    there)."""
    for config in sorted((out / "base").glob("base_s*/config.yaml")):
        return yaml.safe_load(config.read_text())["model"][key]
    return "?"


def _paired(rows: dict, a: str, b: str) -> list[int]:
    return sorted(set(rows.get(a, {})) & set(rows.get(b, {})))


# ----------------------------------------------------------------------------------------------
# The claims


def width(out: Path, seeds: list[int]) -> dict:
    """Paper: d 64 fails, d 128 sub-optimal (against 768). Miniature: the narrowest width fails
    (no sudden drop), the next one ends above the base's final L_mask (same seed), and a width
    above the base's ends at or below it."""
    names = sorted(_variants(out, "width"), key=lambda n: int(n[1:]))
    rows, table = _training_claim(out, "width", names, seeds)
    base_width = _base_model(out, "hidden_size")
    narrower = [n for n in names if base_width == "?" or int(n[1:]) < base_width]
    if len(narrower) < 2:
        return {"table": table, "verdict": "not run"}
    narrow, half = narrower[0], narrower[1]
    fails = [s for s, r in rows[narrow].items() if r["drop_kind"] != "sudden"]

    def ends_above(v: str, s: int) -> bool:
        return rows[v][s]["final_loss_mask"] > rows["base"][s]["final_loss_mask"]

    worse = [s for s in _paired(rows, half, "base") if ends_above(half, s)]
    verdict = (
        f"{narrow} fails (no sudden drop) on {len(fails)}/{len(rows[narrow])} seeds; {half} ends "
        f"above the base width on {len(worse)}/{len(_paired(rows, half, 'base'))}"
    )
    for wide in names[len(narrower) :]:
        pairs = _paired(rows, wide, "base")
        better = [s for s in pairs if not ends_above(wide, s)]
        verdict += f"; {wide} ends at or below the base width on {len(better)}/{len(pairs)}"
    return {"table": table, "verdict": verdict}


def depth(out: Path, seeds: list[int]) -> dict:
    """Paper: 6 layers drop earlier than 4; 8 and 12 change little. Miniature (its base has
    fewer layers, 3): L6's drop before the base's (same seed; a run without a drop counts as
    later); L2's after it; L8's drop within SAME of L6's."""
    rows, table = _training_claim(out, "depth", _variants(out, "depth"), seeds)
    if "L6" not in rows or not rows["L6"]:
        return {"table": table, "verdict": "not run"}
    layers = _base_model(out, "num_hidden_layers")

    def step(v, s):
        return rows[v][s]["drop_step"] if rows[v][s]["drop_kind"] == "sudden" else None

    pairs = _paired(rows, "L6", "base")
    earlier = [
        s
        for s in pairs
        if step("L6", s) is not None
        and (step("base", s) is None or step("L6", s) < step("base", s))
    ]
    verdict = f"6 layers drop before the base's {layers} on {len(earlier)}/{len(pairs)} seeds"
    if rows.get("L2"):
        shallow = _paired(rows, "L2", "base")
        later = [
            s
            for s in shallow
            if step("base", s) is not None
            and (step("L2", s) is None or step("L2", s) > step("base", s))
        ]
        verdict += f"; 2 layers drop after the base's on {len(later)}/{len(shallow)}"
    if rows.get("L8"):
        both = [s for s in _paired(rows, "L8", "L6") if step("L8", s) and step("L6", s)]
        little = [s for s in both if abs(step("L8", s) - step("L6", s)) <= SAME * step("L6", s)]
        verdict += (
            f"; 8 layers drop within {SAME:.0%} of 6 on {len(little)}/"
            f"{len(_paired(rows, 'L8', 'L6'))} (both dropped on {len(both)})"
        )
    return {"table": table, "verdict": verdict}


def gaussian(out: Path, seeds: list[int]) -> dict:
    """Paper: N(0, 1) factors drop too (final ≈ 5.6e-3 against ≈ 4e-3 uniform). Miniature: a
    sudden drop, and the completion ratio against the uniform base (the plateaus differ:
    E[X²] is 1 for N(0, 1) rank-1 factors, 1/9 for Unif[−1, 1])."""
    rows, table = _training_claim(out, "gaussian", ["gaussian"], seeds)
    runs = rows.get("gaussian", {})
    if not runs:
        return {"table": table, "verdict": "not run"}
    dropped = [s for s, r in runs.items() if r["drop_kind"] == "sudden"]
    verdict = (
        f"N(0, 1) factors drop on {len(dropped)}/{len(runs)} seeds; L_mask ends "
        f"{_spread([r['ratio'] for r in runs.values()])}× below its plateau (uniform: "
        f"{_spread([r['ratio'] for r in rows['base'].values()])}×)"
    )
    return {"table": table, "verdict": verdict}


def mixture(out: Path, seeds: list[int]) -> dict:
    """Paper: a 5×5 / 7×7 / 9×9 rank-1 mixture is learnt in order (small first). Miniature:
    3×3 / 4×4 / 5×5; per seed, the drop of each size's eval L_mask (train.py logs
    eval_loss_mask_SxS), in order when the drop steps increase with the size."""
    runs = _runs(out, "mixture", "mix345", seeds)
    keys = sorted(
        {k for r in runs.values() for k in r[-1] if k.startswith("eval_loss_mask_")},
        key=lambda k: int(k.rsplit("x", 1)[1]),
    )
    if not runs or not keys:
        return {"table": [], "verdict": "not run"}
    table, ordered = [], []
    for seed, records in runs.items():
        steps = {}
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            drop = detect_drop([p[0] for p in points], [p[1] for p in points])
            steps[key] = drop["drop_step"] if drop["drop_kind"] == "sudden" else None
        found = [steps[k] for k in keys]
        if all(s is not None for s in found) and found == sorted(found) and len(set(found)) > 1:
            ordered.append(seed)
        table.append({"seed": seed, **{k.removeprefix("eval_loss_mask_"): steps[k] for k in keys}})
    _size_figure(runs, keys, out / "mixture")
    verdict = (
        f"the sizes drop smallest first on {len(ordered)}/{len(runs)} seeds "
        "(drop step of each size's L_mask)"
    )
    return {"table": table, "verdict": verdict}


def _size_figure(runs: dict[int, list[dict]], keys: list[str], folder: Path) -> None:
    """mixture.png: one panel per seed, one curve per size."""
    plt = pyplot()
    with plt.rc_context(plot_style()):
        fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3), squeeze=False)
        for ax, (seed, records) in zip(axes[0], sorted(runs.items())):
            for key in keys:
                points = [(r["step"], r[key]) for r in records if key in r]
                label = key.removeprefix("eval_loss_mask_")
                ax.plot([p[0] for p in points], _smooth([p[1] for p in points]), label=label)
            ax.set(title=f"seed {seed}", yscale="log", xlabel="step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("eval L_mask")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, folder, "mixture")
        close_figure(fig)


def larger(out: Path, seeds: list[int]) -> dict:
    """The authors' code also trains larger matrices; miniature: 6×6 and 7×7, rank 1 and 2, at
    the base width, for the base's steps: does each drop within the budget, and when."""
    names = _variants(out, "larger")
    rows, table = _training_claim(out, "larger", names, seeds)
    parts = [
        f"{v} {sum(r['drop_kind'] == 'sudden' for r in rows[v].values())}/{len(rows[v])}"
        for v in names
        if rows.get(v)
    ]
    return {"table": table, "verdict": "sudden drops within the budget: " + ", ".join(parts)}


def components(out: Path, seeds: list[int]) -> dict:
    """Paper (Fig. 8): trained alone, token embeddings and MLPs show no plateau; positions alone
    drop late (near step 40,000 of 50,000); the others drop earlier than full training.
    Miniature: a group shows a plateau when its loss drops suddenly after at least a tenth of
    the run; 'no plateau' when it has no such drop yet ends FELL× below where it started (not
    BELOW×: the frozen rest bounds how low one group can take the loss, and a base that did not
    complete bounds it above its 8×). It drops before full training when it has no plateau or
    its drop comes before the base run's (same seed)."""
    table, kinds, panels = [], {}, {"full training": _runs(out, "base", "base", seeds)}
    for seed in seeds:
        full = read_metrics(out / "base" / f"base_s{seed}" / "metrics.jsonl")
        full_drop = compare(full)["drop_step"] if full else None
        for group in sorted(
            p.name for p in (out / "components" / f"s{seed}").glob("*") if p.is_dir()
        ):
            records = read_metrics(out / "components" / f"s{seed}" / group / "metrics.jsonl")
            if not records:
                continue
            row = compare(records, below=BELOW)
            steps = records[-1]["step"]
            if row["drop_kind"] == "sudden" and row["drop_step"] >= 0.1 * steps:
                kind = "plateau, then a drop"
            elif row["final_loss_mask"] * FELL < records[0]["loss_mask"]:
                kind = "no plateau"
            else:
                kind = "no drop"
            drop = row["drop_step"] if kind == "plateau, then a drop" else None
            before = drop is not None and full_drop is not None and drop < full_drop
            early = kind == "no plateau" or before
            kinds.setdefault(group, []).append((seed, kind, early))
            panels.setdefault(group, {})[seed] = records
            table.append(
                {
                    "seed": seed,
                    "group": group,
                    "shape": kind,
                    "drop step": drop,
                    "full training's drop": full_drop,
                    "final L_mask": row["final_loss_mask"],
                }
            )
    if not table:
        return {"table": [], "verdict": "not run"}
    title = "components: L_mask of every seed, one group trained, the rest frozen"
    _figure(title, panels, "loss_mask", out / "components", "components")
    parts = []
    for group, found in kinds.items():
        counts = {}
        for _, kind, _ in found:
            counts[kind] = counts.get(kind, 0) + 1
        shape = ", ".join(f"{k} {v}/{len(found)}" for k, v in counts.items())
        early = sum(e for *_, e in found)
        parts.append(f"{group}: {shape}; falls before full training drops {early}/{len(found)}")
    return {"table": table, "verdict": "; ".join(parts)}


def probe(out: Path, seeds: list[int]) -> dict:
    """Paper (Fig. 6): the row of a position is recoverable from layers 3–4, not 1–2.
    Miniature: the row-mates (column-mates) R² rises by more than RISE from the first to the
    last layer; and which of rows and columns the last layer holds better (probe.py)."""
    table, rows_up, cols_up, axes = [], [], [], []
    for seed in seeds:
        path = out / "probe" / f"s{seed}" / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        row, col = s.get("row", {}), s.get("column", {})
        table.append(
            {
                "seed": seed,
                "row R² first → last layer": f"{fmt(row.get('first_layer'))} → "
                f"{fmt(row.get('last_layer'))}",
                "column R² first → last layer": f"{fmt(col.get('first_layer'))} → "
                f"{fmt(col.get('last_layer'))}",
                "better axis": s.get("better_axis"),
            }
        )
        rows_up += [seed] if (row.get("rise") or 0) > RISE else []
        cols_up += [seed] if (col.get("rise") or 0) > RISE else []
        axes.append(s.get("better_axis"))
    if not table:
        return {"table": [], "verdict": "not run"}
    figure = _probe_figure(out, seeds)
    n = len(table)
    counts = ", ".join(f"{a} {axes.count(a)}" for a in sorted(set(axes), key=str))
    verdict = (
        f"the row grows more readable with depth on {len(rows_up)}/{n} seeds, the column on "
        f"{len(cols_up)}/{n}; the last layer holds better: {counts}"
    )
    return {"table": table, "verdict": verdict, "figure": figure}


def ood(out: Path, seeds: list[int]) -> dict:
    """Paper (Fig. 19): out of distribution the BERT is close to nuclear-norm minimisation,
    except when the number of columns changes. Miniature: BERT's hidden-entry MSE within CLOSE×
    the minimiser's at every rank and row count tried, and beyond it at every column count but
    the trained one."""
    table, near, cols_fail = [], [], []
    for seed in seeds:
        path = out / "ood" / f"s{seed}" / "summary.json"
        if not path.is_file():
            continue
        sweeps = json.loads(path.read_text())["sweeps"]

        def ratios(kind: str, keep_trained: bool = True, sweeps=sweeps) -> list[float]:
            sweep = sweeps.get(kind, {"rows": [], "trained": None})
            return [
                r["bert_loss_mask"] / r["nuc_loss_mask"]
                for r in sweep["rows"]
                if r.get("nuc_loss_mask")
                and r.get("bert_loss_mask") is not None
                and (keep_trained or r["value"] != sweep["trained"])
            ]

        close = ratios("rank") + ratios("rows")
        cols = ratios("cols", keep_trained=False)
        table.append(
            {
                "seed": seed,
                "rank and rows: worst BERT / nuclear": fmt(max(close)) if close else "—",
                "columns (untrained): best BERT / nuclear": fmt(min(cols)) if cols else "—",
            }
        )
        near += [seed] if close and max(close) <= CLOSE else []
        cols_fail += [seed] if cols and min(cols) > CLOSE else []
    if not table:
        return {"table": [], "verdict": "not run"}
    figure = _ood_figure(out, seeds)
    n = len(table)
    verdict = (
        f"within {CLOSE:g}× of the nuclear norm at every rank and row count on {len(near)}/{n} "
        f"seeds; beyond it at every untrained column count on {len(cols_fail)}/{n}"
    )
    return {"table": table, "verdict": verdict, "figure": figure}


def _lines(title: str, panels: dict[str, dict[int, tuple[list, list]]], labels, path: Path):
    """One panel per name, one line per seed (x, y); `labels` = (xlabel, ylabel, yscale, line)
    with `line` a reference level drawn dashed (or None)."""
    plt = pyplot()
    xlabel, ylabel, yscale, level = labels
    if not panels:
        return
    with plt.rc_context(plot_style()):
        fig, axes = plt.subplots(
            1, len(panels), figsize=(3.4 * len(panels), 2.8), squeeze=False, sharey=True
        )
        for ax, (name, lines) in zip(axes[0], panels.items()):
            for seed, (x, y) in lines.items():
                ax.plot(x, y, marker="o", ms=3, lw=1, label=seed)
            if level is not None:
                ax.axhline(level, color="0.5", ls="--", lw=0.8)
            ax.set(title=name, xlabel=xlabel, yscale=yscale)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][0].legend(title="seed", fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        save_figure(fig, path.parent, path.name)
        close_figure(fig)


def _probe_figure(out: Path, seeds: list[int]) -> dict:
    """Row-mates and column-mates R² by layer, every seed (probe.py's summary.json)."""
    panels = {"row-mates": {}, "column-mates": {}}
    for seed in seeds:
        path = out / "probe" / f"s{seed}" / "summary.json"
        targets = json.loads(path.read_text()).get("targets", {}) if path.is_file() else {}
        for target, name in (("row", "row-mates"), ("column", "column-mates")):
            layers = targets.get(target, [])
            if layers:
                x = [r["layer"] for r in layers]
                panels[name][seed] = (x, [r["test_r2_mates"] for r in layers])
    labels = ("layer", "test R², own entry left out", "linear", RISE)
    title = "probe: what a linear probe reads of the row and column"
    _lines(title, panels, labels, out / "probe" / "probe")
    return _series(panels)


def _ood_figure(out: Path, seeds: list[int]) -> dict:
    """BERT's hidden-entry MSE over the nuclear-norm minimiser's, per sweep, every seed."""
    panels = {}
    for seed in seeds:
        path = out / "ood" / f"s{seed}" / "summary.json"
        if not path.is_file():
            continue
        for kind, sweep in json.loads(path.read_text())["sweeps"].items():
            rows = [r for r in sweep["rows"] if r.get("nuc_loss_mask") and r.get("bert_loss_mask")]
            if rows and kind != "distribution":
                x = [r["value"] for r in rows]
                y = [r["bert_loss_mask"] / r["nuc_loss_mask"] for r in rows]
                panels.setdefault(kind, {})[seed] = (x, y)
    labels = ("value", "BERT / nuclear norm, hidden-entry MSE", "log", CLOSE)
    _lines("ood: BERT against nuclear-norm minimisation", panels, labels, out / "ood" / "ood")
    return _series(panels)


def _series(panels: dict) -> dict:
    """A figure's lines as summary.json holds them: {panel: {seed: {x, y}}}."""
    return {
        name: {seed: {"x": x, "y": y} for seed, (x, y) in lines.items()}
        for name, lines in panels.items()
    }


REPORTS = {
    "width": width,
    "depth": depth,
    "gaussian": gaussian,
    "mixture": mixture,
    "larger": larger,
    "components": components,
    "probe": probe,
    "ood": ood,
}


def report(out: Path, seeds: list[int]) -> dict:
    """Every claim's folder that exists gets runs.md and summary.json; OUT/claims.md the lot."""
    found = {}
    for claim, fn in REPORTS.items():
        if not (out / claim).is_dir():
            continue
        result = fn(out, seeds)
        found[claim] = result
        table = markdown_table(result["table"]) if result["table"] else "(no runs)\n"
        atomic_write_text(out / claim / "runs.md", f"{result['verdict']}\n\n{table}")
        write_json(out / claim / "summary.json", result)
    lines = [f"- **{claim}**: {r['verdict']}" for claim, r in found.items()]
    atomic_write_text(out / "claims.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return found
