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

import argparse
import shutil
from pathlib import Path

from data import DataConfig
from utils.config import REPO_ROOT, ToolParser, UserError, number, resolve_path, run_script
from utils.files import make_dir
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


def check_bert(ckpt: dict, path: Path) -> None:
    """--hf writes a BertForTokenClassification: the checkpoint must be MatrixBert's."""
    config = ckpt.get("model_config") or {}
    data = (ckpt.get("config") or {}).get("data")
    if "hidden_size" not in config or not isinstance(data, dict):
        raise UserError(
            f"{path} is not a checkpoint of train.py's BERT (a GPT run, or the authors' format); "
            "--hf exports the BERT only (export without --hf copies any run)"
        )


def export(run: Path, out: Path, steps: list[int], hf: bool = False) -> list[Path]:
    """Everything is read and checked first; a failure while writing removes the new OUT_DIR
    (it did not exist before), so a retry is not refused."""
    if out.exists():
        raise UserError(f"{out} exists; export into a new folder")
    if not run.is_dir():
        raise UserError(f"{run} is not a training run folder")
    sources = [run / f"step_{step:06d}.pt" for step in steps]
    checkpoints = [read_checkpoint(path) for path in sources]  # all readable first
    if hf:
        for path, ckpt in zip(sources, checkpoints):
            check_bert(ckpt, path)
    missing = [name for name in RECORD if not (run / name).is_file()]
    if missing:
        raise UserError(f"{run} lacks {', '.join(missing)}: not a finished training run")
    make_dir(out, "OUT_DIR")
    try:
        return write(run, out, sources, checkpoints, hf)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def write(run: Path, out: Path, sources: list[Path], checkpoints: list[dict], hf: bool) -> list:
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ToolParser(prog="scripts.export_run", description=__doc__.splitlines()[0])
    p.add_argument("--hf", action="store_true", help="HuggingFace folders instead of .pt files")
    p.add_argument("run", help="the training run's folder")
    p.add_argument("out", help="a new folder")
    p.add_argument("steps", nargs="+", type=number(int, at_least=0), help="checkpoint steps")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    for path in export(resolve_path(args.run), resolve_path(args.out), args.steps, args.hf):
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    run_script(main)
