"""What the model is measured by, in training and in every analysis: the masked MSE (all,
observed and hidden entries), predictions and losses over batches, each head's attention shares
and role (and the roles' history in a training log), and representation collapse.

train.py logs these at every logging step (hidden progress); att_maps.py, patch.py and the other
analyses report them; one definition of each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data import Batch
from model import MatrixBert
from modeling_bert import HookFn, act_name
from utils.floats import finite_or_none, to_floats

LOSSES = ("loss", "loss_obs", "loss_mask")  # the MSEs over all, observed and hidden entries


def masked_mse(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> dict:
    """MSE over all entries, observed entries and hidden entries (tensors, no host sync).

    `pred`, `target` and `observed` have the same shape; the mean over an empty set is NaN.
    """
    err = (pred.float() - target.float()).square()
    obs = observed.to(err.dtype)
    hid = 1.0 - obs
    return {
        "loss": err.mean(),
        "loss_obs": (err * obs).sum() / obs.sum(),
        "loss_mask": (err * hid).sum() / hid.sum(),
        "mask_value": (pred.float().abs() * hid).sum() / hid.sum(),
    }


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
    """masked_mse of predictions (one [B, T] tensor per batch) over all the batches at once,
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
    """masked_mse over `batches` (`loss`, `loss_obs`, `loss_mask`, `mask_value`), one forward
    pass per batch with `hooks` in place (a batch-mean ablation averages over one batch)."""
    with model.hooks(list(hooks)):
        preds = [model(b.input_ids) for b in batches]
    return batch_losses(preds, batches)


# ----------------------------------------------------------------------------------------------
# Each head's attention: its shares on the query's row, column and itself, and its role


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
