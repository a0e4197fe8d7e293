"""Copy a training run's record and some of its checkpoints, weights only, into a new folder.

    python3 -m scripts.export_run RUN_DIR OUT_DIR STEP [STEP ...]
    python3 -m scripts.export_run --hf RUN_DIR OUT_DIR STEP [STEP ...]

Writes OUT_DIR/config.yaml, metrics.jsonl, summary.json and loss.png as they are, and for each STEP
a step_NNNNNN.pt holding only what the analyses load (the weights, the model and run configs, the
step): no optimizer state or random-generator states, so a checkpoint is a third of the size and
the run cannot be resumed from it. How checkpoints/cpu_demo was made. OUT_DIR must not exist.

With --hf, each STEP becomes a HuggingFace folder OUT_DIR/step_NNNNNN/ instead: config.json,
model.safetensors and a model card (README.md, with the Hub's YAML front matter), which
`transformers.AutoModelForTokenClassification.from_pretrained` loads as a one-label
BertForTokenClassification and every analysis reads with `--ckpt.run=OUT_DIR` (or
`--ckpt.path=OUT_DIR/step_NNNNNN`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from data import DataConfig
from utils.config import REPO_ROOT, UserError, resolve_path, run_script
from utils.hf import write_hf_folder
from utils.runs import read_checkpoint, save_checkpoint

RECORD = ("config.yaml", "metrics.jsonl", "summary.json", "loss.png")
KEPT = ("model", "model_config", "config", "step")


def model_card(ckpt: dict, run: Path) -> str:
    """The model card: what the model does, how a value becomes a token id, how to load it."""
    data = DataConfig(**ckpt["config"]["data"])
    c, step = ckpt["model_config"], ckpt.get("step")
    scale, lo = 10**data.prec, round(data.min_vocab * 10**data.prec)
    example = [(v, 1 + round(v * scale) - lo) for v in (-0.24, 0.0, 0.44)]
    return f"""---
library_name: transformers
pipeline_tag: token-classification
tags:
- matrix-completion
- abrupt-learning
- bert
---

# tf-matcomp: a BERT that completes {data.m}×{data.n} rank-{data.rank} matrices (step {step})

A reproduction of "Abrupt Learning in Transformers: A Case Study on Matrix Completion" (Gopalani,
Lubana, Hu; NeurIPS 2024). The model reads a masked {data.m}×{data.n} matrix X = U Vᵀ (U, V with
i.i.d. {data.distribution} entries, rank {data.rank}, rounded to {data.prec} decimals; each entry
hidden with probability {data.p_mask}) and predicts every entry, hidden ones included. Exported
from the training run `{run.name}` at step {step} by `scripts/export_run.py --hf`.

## Tokens

The matrix is flattened row-major (entry (i, j) at position i·{data.n} + j), {data.m * data.n}
tokens, no CLS or SEP. A hidden entry is the MASK id 0; a value v is
`1 + round(v · {scale}) − ({lo})`, so the vocabulary holds {c["vocab_size"]} ids:
{", ".join(f"{v:g} → {i}" for v, i in example)}.

## Model

A BERT encoder ({c["num_hidden_layers"]} layers, {c["num_attention_heads"]} heads, width
{c["hidden_size"]}, MLP {c["intermediate_size"]}, post-LayerNorm, learned absolute positions, no
dropout) and a linear read-out to one number per position: `BertForTokenClassification` with
`num_labels=1`, whose logits are the predicted entries. There are no token types (the one
type-0 embedding is zero) and no attention mask: every entry attends to every other.

```python
import torch
from transformers import AutoModelForTokenClassification

model = AutoModelForTokenClassification.from_pretrained("PATH/TO/THIS/FOLDER").eval()
ids = torch.tensor([[...]])  # [batch, {data.m * data.n}] token ids as above
with torch.no_grad():
    entries = model(input_ids=ids).logits.squeeze(-1)  # [batch, {data.m * data.n}]
```

In the tf-matcomp code, every analysis reads the folder that holds this one:
`python3 att_maps.py --config configs/att_maps.yaml --ckpt.run=FOLDER`. The training run's data
config and step are in config.json under `tf_matcomp`.
"""


def export(run: Path, out: Path, steps: list[int], hf: bool = False) -> list[Path]:
    if out.exists():
        raise UserError(f"{out} exists; export into a new folder")
    sources = [run / f"step_{step:06d}.pt" for step in steps]
    checkpoints = [read_checkpoint(path) for path in sources]  # all readable first
    missing = [name for name in RECORD if not (run / name).is_file()]
    if missing:
        raise UserError(f"{run} lacks {', '.join(missing)}: not a finished training run")
    out.mkdir(parents=True)
    for name in RECORD:
        shutil.copy2(run / name, out / name)
    where = out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out
    written = []
    for path, ckpt in zip(sources, checkpoints):
        if hf:
            meta = {"step": ckpt.get("step"), "data": ckpt["config"]["data"]}
            card = model_card(ckpt, run)
            written += write_hf_folder(
                out / path.stem, ckpt["model"], ckpt["model_config"], meta, card
            )
            continue
        slim = {k: ckpt[k] for k in KEPT if k in ckpt}
        if isinstance(slim.get("config", {}).get("train"), dict):  # the run now lives in `out`
            slim["config"]["train"]["out_dir"] = str(where)
        save_checkpoint(out / path.name, slim)
        written.append(out / path.name)
    return written


def main(args: list[str]) -> None:
    hf = args[:1] == ["--hf"]
    args = args[1:] if hf else args
    if len(args) < 3 or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if args[:1] in (["-h"], ["--help"]) else 2)
    try:
        steps = [int(a) for a in args[2:]]
    except ValueError:
        raise UserError("steps must be integers") from None
    for path in export(resolve_path(args[0]), resolve_path(args[1]), steps, hf):
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    run_script(main)
