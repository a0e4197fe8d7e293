"""The matrix-completion model: our BERT encoder plus a linear read-out to one number per entry.

State dict: the encoder under `backbone.` (HF names, see modeling_bert.py), the read-out under
`read_out.`. A checkpoint carries the encoder's config, so `load_checkpoint(path)` rebuilds the
model from the file alone. Checkpoints written by the authors' code (`_backbone.` keys, `epoch`,
`vocab_size`) load too; their head count is not in the file and must be passed in. Analyses run
the model through `predict` (input ids in chunks) and `evaluate` (the masked MSE over batches).

The measures of what the model does inside that both the analyses and the training loop report
live here too: each head's attention shares and role (`attention_shares`, `head_roles`), and
representation collapse (`representation_collapse`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data import Batch, DataConfig, MatrixSampler
from modeling_bert import BertConfig, BertModel, HookedModule, HookFn, act_name
from utils import (
    AnalysisConfig,
    AnalysisData,
    CkptSection,
    PrePostCkptSection,
    StepsCkptSection,
    UserError,
    checkpoints,
    choose_device,
    finite_or_none,
    masked_mse,
    read_checkpoint,
    resolve_path,
    seed_everything,
    to_floats,
)


class MatrixBert(HookedModule):
    """Hook names are the encoder's (modeling_bert.py), without a `backbone.` prefix."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.backbone = BertModel(config)
        self.hook_points = self.backbone.hook_points
        # Like the authors' model, the read-out keeps PyTorch's default Linear initialisation
        # (HF's N(0, 0.02) init applies only to modules inside BertModel).
        self.read_out = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> predicted entries [B, T]."""
        return self.read_out(self.backbone(input_ids).last_hidden_state).squeeze(-1)


def check_fits(config: BertConfig, vocab_size: int, max_tokens: int) -> None:
    """The model can take this data: every token id and every position has an embedding."""
    if vocab_size > config.vocab_size:
        raise UserError(
            f"data needs {vocab_size} token ids but the model has {config.vocab_size}; "
            "the vocabulary settings (prec, min_vocab, max_vocab) differ from training"
        )
    if max_tokens > config.max_position_embeddings:
        raise UserError(
            f"matrices of {max_tokens} entries exceed the model's "
            f"{config.max_position_embeddings} position embeddings"
        )


# ----------------------------------------------------------------------------------------------
# The layers, heads and positions a config names (0-based), checked before any hook uses them


def resolve_indices(values: list[int] | None, size: int, key: str) -> list[int] | None:
    """Indices (layers, heads or positions) checked against `size`, negative ones counted from the
    end; None (all) stays None. An error names the config `key`."""
    if values is None:
        return None
    out = []
    for v in values:
        if not -size <= v < size:
            raise UserError(f"'{key}' has {v}, outside 0..{size - 1} (or -{size}..-1 from the end)")
        out.append(v % size)
    return out


def check_heads(pairs: list[list[int]], config: BertConfig, key: str) -> list[tuple[int, int]]:
    """[layer, head] pairs checked against the model; an error names the config `key`."""
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise UserError(f"'{key}': expected [layer, head], got {pair}")
        layer, head = pair
        if not 0 <= layer < config.num_hidden_layers:
            raise UserError(f"'{key}': layer {layer} outside 0..{config.num_hidden_layers - 1}")
        if not 0 <= head < config.num_attention_heads:
            raise UserError(f"'{key}': head {head} outside 0..{config.num_attention_heads - 1}")
        out.append((layer, head))
    return out


# ----------------------------------------------------------------------------------------------
# Predicting and evaluating: what every analysis runs the model through


@torch.no_grad()
def predict(
    model: nn.Module, input_ids: torch.Tensor, batch_size: int, device: str | torch.device
) -> torch.Tensor:
    """Predictions [B, T] (float32, on the CPU) of `model` (anything mapping input ids [B, T] to
    predictions), `batch_size` matrices per forward pass on `device`."""
    chunks = input_ids.split(batch_size)
    return torch.cat([model(ids.to(device)).float().cpu() for ids in chunks])


def batch_losses(preds: list[torch.Tensor], batches: list[Batch]) -> dict[str, float | None]:
    """utils.masked_mse of predictions (one [B, T] tensor per batch) over all the batches at once,
    so every entry weighs the same whatever the batch sizes; floats, None for an empty set."""

    def flat(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([x.flatten() for x in xs])

    target, observed = flat([b.target for b in batches]), flat([b.observed for b in batches])
    metrics = to_floats(masked_mse(flat(preds), target, observed))
    return {k: finite_or_none(v) for k, v in metrics.items()}


@torch.no_grad()
def evaluate(
    model: MatrixBert, batches: list[Batch], hooks: list[tuple[str, HookFn]] = ()
) -> dict[str, float | None]:
    """utils.masked_mse over `batches` (`loss`, `loss_obs`, `loss_mask`, `mask_value`), one forward
    pass per batch with `hooks` in place (a batch-mean ablation averages over one batch)."""
    with model.hooks(list(hooks)):
        preds = [model(b.input_ids) for b in batches]
    return batch_losses(preds, batches)


# ----------------------------------------------------------------------------------------------
# Measures of what the model does inside: att_maps.py, the other analyses and train.py's hidden-
# progress log all use these.

SHARES = ("row", "col", "self", "observed", "hidden")
ROLES = ("row", "column", "self", "other")
ROLE_MIN_SHARE = 0.5
ROLE_RULE = (
    "a head is a row / column / self head when more than half of its attention (averaged over "
    "queries and matrices) goes to the other entries of the query's row / of its column / to the "
    "query itself; otherwise 'other'"
)


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


def head_role(row: float, col: float, self_: float) -> str:
    """One head's role from its row, column and self shares, by ROLE_RULE. The three sets of
    keys are disjoint, so at most one share can exceed one half."""
    for role, share in (("row", row), ("column", col), ("self", self_)):
        if share > ROLE_MIN_SHARE:
            return role
    return "other"


def head_roles(shares: dict) -> list[list[str]]:
    """Roles [layer][head] from shares {"row", "col", "self": [L, H] tensors or nested lists}."""
    row, col, self_ = (torch.as_tensor(shares[k]).tolist() for k in ("row", "col", "self"))
    return [
        [head_role(r, c, s) for r, c, s in zip(rr, cc, ss)] for rr, cc, ss in zip(row, col, self_)
    ]


def heads_with_role(roles: list[list[str]], role: str) -> list[tuple[int, int]]:
    """(layer, head) pairs, 0-based, whose role is `role`."""
    return [(i, h) for i, layer in enumerate(roles) for h, r in enumerate(layer) if r == role]


# The roles in a training log: train.py's records hold each head's shares as [layer][head] lists
# (att_row, att_col, att_self) at the steps that measured them (train.progress).


def record_roles(record: dict) -> list[list[str]] | None:
    """The roles [layer][head] at one logged record; None where it did not measure the shares."""
    if "att_row" not in record:
        return None
    return head_roles({k: record[f"att_{k}"] for k in ("row", "col", "self")})


def final_roles(records: list[dict]) -> list[list[str]] | None:
    """The roles [layer][head] at the last step that logged the head shares (None: never)."""
    logged = [r for r in records if "att_row" in r]
    return record_roles(logged[-1]) if logged else None


def role_counts(record: dict) -> dict:
    """How many heads are row, column and self heads at this record (for the dashboards)."""
    roles = record_roles(record)
    if roles is None:
        return {}
    flat = [r for layer in roles for r in layer]
    return {f"{role}_heads": flat.count(role) for role in ("row", "column", "self")}


def role_changes(records: list[dict]) -> list[dict]:
    """Each head (layer and head 0-based) that is a row, column or self head (ROLE_RULE) at the
    last step that measured the shares (the run's last, unless it was resumed with
    `train.progress` off), the logged step from which it kept that role, and its shares then."""
    measured = [r for r in records if "att_row" in r]
    if not measured:
        return []
    logged = [(r["step"], record_roles(r)) for r in measured]
    last_step, final = logged[-1]
    last = measured[-1]
    out = []
    for i, layer in enumerate(final):
        for h, role in enumerate(layer):
            if role == "other":
                continue
            since = last_step
            for step, roles in reversed(logged):
                if roles[i][h] != role:
                    break
                since = step
            out.append(
                {
                    "layer": i,
                    "head": h,
                    "role": role,
                    "since_step": since,
                    "at_step": last_step,
                    **{f"final_{k}": last[f"att_{k}"][i][h] for k in ("row", "col", "self")},
                }
            )
    return out


@torch.no_grad()
def attention_summary(model: MatrixBert, batches: list[Batch], mean_pattern: bool = False) -> dict:
    """Over `batches`: the shares per layer and head ({SHARES key: [L, H]}, each matrix weighing
    the same), the roles [L][H] (ROLE_RULE), the model's losses, the observed fraction, and with
    `mean_pattern` the mean attention pattern [L, H, T, T] (one matrix size only)."""
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    names = [act_name("pattern", i) for i in range(layers)]
    shares = {k: torch.zeros(layers, heads) for k in SHARES}
    total, preds, count = None, [], 0
    for batch in batches:
        pred, cache = model.run_with_cache(batch.input_ids, names)
        preds.append(pred)
        b = batch.input_ids.shape[0]
        for i, name in enumerate(names):
            for k, v in attention_shares(cache[name], batch.observed, batch.m, batch.n).items():
                shares[k][i] += b * v.cpu()
        if mean_pattern:
            summed = torch.stack([cache[name].float().sum(0).cpu() for name in names])
            total = summed if total is None else total + summed
        count += b
    shares = {k: v / count for k, v in shares.items()}
    observed = torch.cat([b.observed.flatten() for b in batches])
    out = {
        "shares": shares,
        "roles": head_roles(shares),
        "losses": batch_losses(preds, batches),
        "observed_fraction": observed.float().mean().item(),
    }
    if mean_pattern:
        out["pattern"] = total / count
    return out


ROLE_SPECS = ("row", "column", "self", "row+column")


def resolve_heads(
    spec: list[list[int]] | str, model: MatrixBert, batches: list[Batch], key: str
) -> tuple[list[tuple[int, int]], dict]:
    """The heads a config names: [layer, head] pairs (0-based, checked against the model), or a
    role from ROLE_SPECS resolved on `batches` by ROLE_RULE, so that a script takes this
    model's own row or column heads rather than indices from another run. Returns the pairs
    and a note of how they were chosen (for the summary)."""
    if isinstance(spec, str):
        if spec not in ROLE_SPECS:
            raise UserError(
                f"'{key}' = {spec!r}: not a role (valid: {', '.join(ROLE_SPECS)}) "
                "or a list of [layer, head] pairs"
            )
        found = attention_summary(model, batches)
        roles = found["roles"]
        pairs = [p for role in spec.split("+") for p in heads_with_role(roles, role)]
        if not pairs:
            shares = found["shares"]
            best = ", ".join(f"{k} {shares[k].max().item():.2f}" for k in ("row", "col", "self"))
            raise UserError(
                f"'{key}' = {spec!r}: this checkpoint has no such heads (a head needs a share "
                f"above {ROLE_MIN_SHARE}; the largest here: {best}); name heads as "
                "[layer, head] pairs"
            )
        return sorted(pairs), {"by_role": spec, "rule": ROLE_RULE, "roles": roles}
    try:
        return check_heads(spec, model.config, key), {"by_role": None}
    except UserError as e:
        raise UserError(f"{e}; or name heads by role: {', '.join(ROLE_SPECS)}") from None


def representation_collapse(hidden: torch.Tensor) -> torch.Tensor:
    """Mean |cosine| between the hidden states of different positions of one matrix, averaged
    over positions and matrices: hidden [B, T, D] -> a scalar tensor. 1 means every position
    holds the same direction (the "representation collapse" of Gopalani & Hu, 2025)."""
    x = F.normalize(hidden.float(), dim=-1)
    cos = (x @ x.transpose(1, 2)).abs()  # [B, T, T]
    t = cos.shape[-1]
    if t < 2:
        return cos.new_tensor(float("nan"))
    return (cos.sum(dim=(1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(-1)).mean() / (t * (t - 1))


# ----------------------------------------------------------------------------------------------
# Loading


def _authors_state_dict(sd: dict, num_attention_heads: int | None) -> tuple[BertConfig, dict]:
    """The authors' state dict (`_backbone.` keys) in our names, with sizes read off the weights."""
    if num_attention_heads is None:
        raise UserError(
            "an authors'-format checkpoint does not record the head count; set "
            "ckpt.num_attention_heads (the paper: 8)"
        )
    sd = {k.replace("_backbone.", "backbone.", 1): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(("position_ids", "token_type_ids"))}
    tt = sd.pop("backbone.embeddings.token_type_embeddings.weight", None)
    if tt is not None:  # HF adds token type 0 at every position: fold it in, exactly
        sd["backbone.embeddings.position_embeddings.weight"] = (
            sd["backbone.embeddings.position_embeddings.weight"] + tt[0]
        )
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.encoder\.layer\.(\d+)", k))}
    vocab, hidden = sd["backbone.embeddings.word_embeddings.weight"].shape
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=num_attention_heads,
        intermediate_size=sd["backbone.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=sd["backbone.embeddings.position_embeddings.weight"].shape[0],
    )
    return config, sd


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", num_attention_heads: int | None = None
) -> tuple[MatrixBert, dict]:
    """(model in eval mode on `device`, the checkpoint dict) from one of our checkpoints or the
    authors'. `num_attention_heads` is used for the authors' format only."""
    ckpt = read_checkpoint(path, device)
    sd = ckpt["model"]
    if "model_config" in ckpt:
        try:
            config = BertConfig(**ckpt["model_config"])
        except (TypeError, ValueError) as e:
            raise UserError(
                f"checkpoint {path}: model_config does not fit this code ({e})"
            ) from None
    elif any(k.startswith("_backbone.") for k in sd):
        config, sd = _authors_state_dict(sd, num_attention_heads)
        if "epoch" in ckpt:  # their 0-based loop index: `epoch` + 1 updates were done
            ckpt.setdefault("step", int(ckpt["epoch"]) + 1)
    else:
        raise UserError(f"checkpoint {path} has neither model_config nor authors'-format weights")
    model = MatrixBert(config)
    if mismatch := state_dict_mismatch(model.state_dict(), sd):
        raise UserError(f"checkpoint {path}: weights do not fit the model ({mismatch})")
    model.load_state_dict(sd)
    return model.to(device).eval(), ckpt


def state_dict_mismatch(expected: dict, given: dict) -> str | None:
    """What keeps `given` from loading into a model whose state dict is `expected`: the first
    missing, unexpected and mis-shaped keys; None when it fits."""
    parts = []
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} for {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            parts.append(f"{what}: {keys[0]}{more}")
    return "; ".join(parts) or None


# ----------------------------------------------------------------------------------------------
# What analysis scripts load: a `ckpt` section, and data defaulting to the checkpoint's own


def checkpoint_path(section: CkptSection, step: int | None = None) -> Path:
    """The checkpoint a `ckpt` section names: `path`, or `run`/step_NNNNNN.pt, or an exported
    `run`/step_NNNNNN/ folder in HF format (`step` overrides the section's; neither given: the
    last checkpoint in `run`). A missing one is an error that lists the steps the run holds, or
    says how to make the run."""
    if section.path:
        return resolve_path(section.path)
    run = resolve_path(section.run)
    step = section.step if step is None else step
    found = checkpoints(run) if run.is_dir() else {}
    if not found:
        if run.is_dir():
            raise UserError(
                f"{run} holds no checkpoints; continue its training with --train.resume=true "
                "or point --ckpt.run at a run that has some"
            )
        raise UserError(
            f"no training run in {run}; make it with: python3 train.py --config "
            f"configs/train.yaml --train.out_dir={section.run}"
            + (f" (with {step} in train.save_steps)" if step is not None else "")
        )
    if step is None:
        return found[max(found)]
    if step not in found:
        raise UserError(
            f"checkpoint step_{step:06d}.pt not found in {run}, which holds steps "
            f"{', '.join(map(str, found))}; choose among them (--ckpt.step={max(found)}, or "
            "--ckpt.steps=[...], --ckpt.pre_step / --ckpt.post_step where the script takes several)"
        )
    return found[step]


def load_from_section(
    section: CkptSection, device: str | torch.device = "cpu", step: int | None = None
) -> tuple[MatrixBert, dict]:
    """(model in eval mode, checkpoint) for a `ckpt` section, at `step` if given."""
    path = checkpoint_path(section, step)
    return load_checkpoint(path, device, section.num_attention_heads)


def trained_data_config(ckpt: dict, path: str | Path = "the checkpoint") -> DataConfig:
    """The data section the checkpoint was trained on (the paper's for an authors' checkpoint)."""
    saved = ckpt.get("config", {}).get("data")
    if not saved:
        return DataConfig()
    try:
        return DataConfig(**saved)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: its data config does not fit this code ({e})") from None


def analysis_data_config(ckpt: dict, section: AnalysisData, model: MatrixBert) -> DataConfig:
    """The checkpoint's data config with the analysis' non-null overrides, checked against the
    model (vocabulary and positions)."""
    base = trained_data_config(ckpt).__dict__.copy()
    for key in ("m", "n", "rank", "p_mask", "distribution", "scale"):
        value = getattr(section, key)
        if value is not None:
            base[key] = value
    if section.m is not None or section.n is not None:
        base["sizes"] = []
    cfg = DataConfig(**base)
    check_fits(model.config, cfg.vocab_size, cfg.max_tokens)
    return cfg


@dataclass
class Loaded:
    """One checkpoint an analysis runs on: the model (eval mode), the checkpoint dict, and the
    data the analysis draws for it (the checkpoint's own with the `data` section's overrides)."""

    model: MatrixBert
    ckpt: dict
    data: DataConfig

    @property
    def step(self) -> int | None:
        return self.ckpt.get("step")


@dataclass
class Analysis:
    """What `open_analysis` hands a script: the device, every checkpoint loaded and checked, the
    data config every checkpoint takes, and a seeded sampler of it."""

    cfg: AnalysisConfig
    device: torch.device
    loaded: list[Loaded]
    data: DataConfig
    sampler: MatrixSampler

    @property
    def model(self) -> MatrixBert:
        return self.loaded[0].model

    @property
    def ckpt(self) -> dict:
        return self.loaded[0].ckpt

    def batches(self, num_samples: int | None = None, **kwargs) -> list[Batch]:
        """`num_samples` (default `data.num_samples`) fresh m×n matrices in `data.batch_size`
        batches; keyword arguments go to MatrixSampler.sample (observed, p_mask ...)."""
        section = self.cfg.data
        count = section.num_samples if num_samples is None else num_samples
        d = self.data
        return self.sampler.sample_many(count, section.batch_size, d.m, d.n, **kwargs)


def ckpt_sections(section: CkptSection | StepsCkptSection | PrePostCkptSection) -> list:
    """The checkpoints a `ckpt` section names, in order (pre before post)."""
    if isinstance(section, CkptSection):
        return [section]
    found = section.sections()
    return list(found.values()) if isinstance(found, dict) else found


def open_analysis(
    cfg: AnalysisConfig,
    sampler_device: str | torch.device | None = None,
    data_from: int = 0,
    one_size: bool = False,
) -> Analysis:
    """The opening every analysis shares, before it writes anything: seed, device, every
    checkpoint found, then loaded, the data config (of checkpoint `data_from`, with the `data`
    overrides; `one_size` drops a mixture of sizes) checked against every model, and a sampler
    seeded with `cfg.seed` on `sampler_device` (default: the device)."""
    seed_everything(cfg.seed)
    device = choose_device(cfg.device)
    sections = ckpt_sections(cfg.ckpt)
    for section in sections:  # a missing checkpoint stops the script before any loading
        checkpoint_path(section)
    loaded = []
    for section in sections:
        model, ckpt = load_from_section(section, device)
        data = analysis_data_config(ckpt, cfg.data, model)
        if one_size:
            data.sizes = []
        loaded.append(Loaded(model, ckpt, data))
    data = loaded[data_from].data
    for one in loaded:
        check_fits(one.model.config, data.vocab_size, data.max_tokens)
    sampler = MatrixSampler(data, device if sampler_device is None else sampler_device, cfg.seed)
    return Analysis(cfg, device, loaded, data, sampler)
