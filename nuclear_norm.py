"""Nuclear-norm minimisation, the convex baseline the BERT is compared with: for each matrix A
with observed set Ω, the exact problem

    min ‖X‖*  subject to  X = A on Ω

and the regularised one, min (1/|Ω|)‖P_Ω(X − A)‖²_F + λ‖X‖*, by one of two solvers that give the
same minimiser (tests/test_cvx_nuc_norm.py checks both against a plain cvxpy solve): `ipm`, our
batched interior-point method in torch (the default; a whole batch at once, ≈ 2 ms per 7×7 matrix
on one loaded CPU core), and cvxpy (`CLARABEL` or `SCS`), one problem built with Parameters and
re-solved per matrix (≈ 11 ms each with Clarabel on the same core; both measured with
`python3 compare_nuc_bert.py --compare.p_masks=[0.3] --compare.solver=...`, 512 matrices). A
problem the solver cannot solve is counted, its solution is NaN, and the losses are averaged over
the solved ones. Where the minimiser is not unique (common when many entries are hidden) the two
may return different minimisers with the same nuclear norm; the interior-point method returns one
near the centre of the optimal set.

cvx_nuc_norm.py (the authors' table), compare_nuc_bert.py (Fig. 3) and ood.py (Fig. 19) use it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from data import Batch
from measures import LOSSES, masked_mse
from utils.config import UserError
from utils.floats import finite_or_none, to_floats

SOLVERS = ("ipm", "CLARABEL", "SCS")


# ----------------------------------------------------------------------------------------------
# The batched interior-point solver
#
# ‖X‖* = min ½ tr S over S = [[W1, X], [Xᵀ, W2]] ⪰ 0, so both problems are semidefinite programs in
# S ∈ S^{m+n}: minimise ⟨C, S⟩ + w‖𝒜S − b‖² over S ⪰ 0, with C = ½ I, 𝒜S the observed entries of
# the off-diagonal block, b the observed values and w = 1/(λ|Ω|) (the exact problem: w = ∞, i.e.
# 𝒜S = b). The dual is max bᵀy − ‖y‖²/(4w) subject to Z = C − 𝒜*y ⪰ 0. Each iteration takes a
# Mehrotra predictor-corrector step along the HKM direction, whose normal equations are
# (M + d I) Δy = r with M_kl = ⟨A_k, S A_l Z⁻¹⟩ and d = 1/(2w) = λ|Ω|/2. Hidden entries carry no
# constraint: their rows of the normal equations are the identity, so their y stays 0. The start
# S = [[tI, B], [Bᵀ, tI]] (t > ‖B‖₂), y = 0, Z = C is strictly feasible, so every iterate is too.

RUNNING, SOLVED, FAILED = 0, 1, 2


def _off_diagonal(w: torch.Tensor, m: int) -> torch.Tensor:
    """𝒜 without the mask: ⟨A_k, W⟩ for every entry k of the m×n block, as [B, m·n]."""
    block = 0.5 * (w[:, :m, m:] + w[:, m:, :m].mT)
    return block.flatten(1)


def _lift(y: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """𝒜*: [B, m·n] -> the symmetric [B, m+n, m+n] with y/2 in the off-diagonal blocks."""
    half = 0.5 * y.reshape(-1, m, n)
    top = torch.cat([half.new_zeros(len(half), m, m), half], dim=2)
    bottom = torch.cat([half.mT, half.new_zeros(len(half), n, n)], dim=2)
    return torch.cat([top, bottom], dim=1)


def _normal_matrix(s: torch.Tensor, z_inv: torch.Tensor, m: int) -> torch.Tensor:
    """M_kl = ⟨A_k, S A_l Z⁻¹⟩ for every pair of entries k = (i, j), l = (p, q): [B, m·n, m·n].

    With S = [[P, Q], [Qᵀ, R]] and Z⁻¹ = [[P', Q'], [Q'ᵀ, R']] it is
    ¼ (P'_ip R_jq + P_ip R'_jq + Q_iq Q'_pj + Q'_iq Q_pj): two Kronecker-like products (each a
    sum over the stacked pair), no gathers.
    """
    p, q, r = s[:, :m, :m], s[:, :m, m:], s[:, m:, m:]
    pi, qi, ri = z_inv[:, :m, :m], z_inv[:, :m, m:], z_inv[:, m:, m:]
    k = q.shape[1] * q.shape[2]
    kron = torch.einsum("bcip,bcjq->bijpq", 0.25 * torch.stack([pi, p], 1), torch.stack([r, ri], 1))
    cross = torch.einsum(
        "bciq,bcpj->bijpq", 0.25 * torch.stack([q, qi], 1), torch.stack([qi, q], 1)
    )
    return kron.reshape(-1, k, k) + cross.reshape(-1, k, k)


def _step_length(
    chol: torch.Tensor, ds: torch.Tensor, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """min(1, fraction · the largest α with S + α dS ⪰ 0), where S = chol cholᵀ; and whether
    the eigenvalues were finite."""
    t = torch.linalg.solve_triangular(chol, ds, upper=False)
    t = torch.linalg.solve_triangular(chol, t.mT, upper=False)
    t = 0.5 * (t + t.mT)
    finite = torch.isfinite(t).flatten(1).all(1)
    lowest = torch.linalg.eigvalsh(torch.where(finite[:, None, None], t, 0.0))[:, 0]
    alpha = torch.where(lowest < 0, (-fraction / lowest).clamp(max=1.0), 1.0)
    return alpha, finite


def _ipm_iteration(s, y, z, b, active, d, m, n, tol):
    """One predictor-corrector step for a batch of running problems.

    Returns the new (S, y, Z), the status of each problem (RUNNING, or SOLVED / FAILED when it
    stopped before this step; those keep their iterate) and the relative gap before the step.
    """
    size = m + n
    eye = torch.eye(size, dtype=s.dtype)
    c = 0.5 * eye
    rp = active * (b - _off_diagonal(s, m) - d[:, None] * y)
    rd = c - _lift(y, m, n) - z
    mu = (s * z).sum((1, 2)) / size
    gap = size * mu / (1.0 + 0.5 * s.diagonal(dim1=1, dim2=2).sum(-1).abs())
    infeasible = torch.maximum(rp.abs().amax(1), rd.abs().flatten(1).amax(1))
    solved = (gap < tol) & (infeasible < tol * (1.0 + b.abs().amax(1)))

    chol_z, bad_z = torch.linalg.cholesky_ex(z)
    chol_s, bad_s = torch.linalg.cholesky_ex(s)
    z_inv = torch.cholesky_inverse(torch.where((bad_z == 0)[:, None, None], chol_z, eye))
    normal = _normal_matrix(s, z_inv, m) * (active[:, :, None] * active[:, None, :])
    normal.diagonal(dim1=1, dim2=2).add_(1.0 - active + d[:, None] * active)
    chol_m, bad_m = torch.linalg.cholesky_ex(normal)
    if bool((bad_m > 0).any()):  # near the end M can be too ill-conditioned: shift it a little
        diagonal = normal.diagonal(dim1=1, dim2=2)
        shift = 1e-12 * diagonal.amax(1, keepdim=True) * (bad_m > 0).to(s.dtype)[:, None]
        chol_m, bad_m = torch.linalg.cholesky_ex(
            normal + torch.diag_embed(shift.expand_as(diagonal))
        )
    ok = (bad_z == 0) & (bad_s == 0) & (bad_m == 0)

    def direction(rc):
        rhs = active * (rp - _off_diagonal((rc - s @ rd) @ z_inv, m))
        dy = active * torch.cholesky_solve(rhs.unsqueeze(-1), chol_m).squeeze(-1)
        dz = rd - _lift(dy, m, n)
        ds = (rc - s @ dz) @ z_inv
        return 0.5 * (ds + ds.mT), dy, dz

    sz = s @ z
    ds, dy, dz = direction(-sz)  # predictor: aim straight at the optimum
    a_p, fin_p = _step_length(chol_s, ds, 1.0)
    a_d, fin_d = _step_length(chol_z, dz, 1.0)
    mu_aff = ((s + a_p[:, None, None] * ds) * (z + a_d[:, None, None] * dz)).sum((1, 2)) / size
    sigma = (mu_aff / mu).clamp(0.0, 1.0) ** 3
    rc = (sigma * mu)[:, None, None] * eye - sz - ds @ dz  # corrector: recentre, second order
    ds, dy, dz = direction(rc)
    a_p, fin_p2 = _step_length(chol_s, ds, 0.98)
    a_d, fin_d2 = _step_length(chol_z, dz, 0.98)
    ok = ok & fin_p & fin_d & fin_p2 & fin_d2 & torch.isfinite(dy).all(1)

    status = torch.full_like(mu, RUNNING, dtype=torch.long)
    status[~ok] = FAILED
    status[solved] = SOLVED
    move = (status == RUNNING).to(s.dtype)
    a_p, a_d = a_p * move, a_d * move
    ds, dy, dz = (torch.nan_to_num(t) for t in (ds, dy, dz))
    s = s + a_p[:, None, None] * ds
    y = y + a_d[:, None] * dy
    z = z + a_d[:, None, None] * dz
    return s, y, z, status, gap


def solve_ipm(
    values: torch.Tensor,
    observed: torch.Tensor,
    lam: float = 0.0,
    tol: float = 1e-9,
    max_iter: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nuclear-norm completion of a batch by the batched interior-point method above.

    `values`, `observed` [B, m, n]; `lam` = 0 is the exact problem, `lam` > 0 the regularised one.
    Returns (solutions [B, m, n] float64 on the CPU, NaN where unsolved; solved [B] bool). A
    problem is solved when its relative duality gap and residuals are below `tol`; one whose
    step breaks down numerically first still counts as solved if its gap is below 100 · `tol`.
    """
    if lam < 0:
        raise UserError(f"λ must be ≥ 0, got {lam}")
    # The kernels work on (m+n)-sized matrices: a second thread costs more than it gives, and
    # on a loaded machine it made the solve twenty times slower. Restored on the way out.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _solve_ipm(values, observed, lam, tol, max_iter)
    finally:
        torch.set_num_threads(threads)


def _solve_ipm(values, observed, lam, tol, max_iter):
    values = values.detach().cpu().double()
    observed = observed.detach().cpu().bool()
    batch, m, n = values.shape
    size, f64 = m + n, torch.float64
    block = torch.where(observed, values, 0.0)
    b = block.flatten(1)
    active = observed.flatten(1).to(f64)
    d = lam * active.sum(1) / 2
    t = torch.linalg.matrix_norm(block, ord=2) + 1.0
    s = t[:, None, None] * torch.eye(size, dtype=f64).repeat(batch, 1, 1)
    s[:, :m, m:] = block
    s[:, m:, :m] = block.mT
    y = torch.zeros(batch, m * n, dtype=f64)
    z = 0.5 * torch.eye(size, dtype=f64).repeat(batch, 1, 1)
    status = torch.full((batch,), RUNNING, dtype=torch.long)
    gap = torch.full((batch,), float("inf"), dtype=f64)

    for _ in range(max_iter):
        run = (status == RUNNING).nonzero().squeeze(1)
        if run.numel() == 0:
            break
        s[run], y[run], z[run], status[run], gap[run] = _ipm_iteration(
            s[run], y[run], z[run], b[run], active[run], d[run], m, n, tol
        )
    status[(status == FAILED) & (gap < 100 * tol)] = SOLVED
    solved = status == SOLVED
    x = s[:, :m, m:].clone()
    if lam == 0:
        x = torch.where(observed, values, x)
    x[~solved] = float("nan")
    return x, solved


# ----------------------------------------------------------------------------------------------
# cvxpy: one parametrised problem per call, re-solved for each matrix


def solve_cvxpy(
    values: torch.Tensor,
    observed: torch.Tensor,
    lam: float = 0.0,
    solver: str = "CLARABEL",
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same problems with cvxpy: built once with Parameters, then re-solved per matrix (the
    canonicalisation is cached), cheaper than a fresh problem each time. `options` go
    to the solver (e.g. tolerances). A matrix counts as solved where cvxpy returns a solution
    (status optimal or optimal_inaccurate). Returns what `solve_ipm` returns."""
    import cvxpy as cp  # not installed on every machine; only this solver needs it

    if lam < 0:
        raise UserError(f"λ must be ≥ 0, got {lam}")
    a = values.detach().cpu().double().numpy()
    obs = observed.detach().cpu().numpy().astype(np.float64)
    batch, m, n = a.shape
    x = cp.Variable((m, n))
    weight = cp.Parameter((m, n), nonneg=True)
    target = cp.Parameter((m, n))
    fit = cp.multiply(weight, x) - target
    if lam == 0:
        problem = cp.Problem(cp.Minimize(cp.normNuc(x)), [fit == 0])
    else:  # the weight 1/√|Ω| on each observed entry gives the 1/|Ω| in front of the fit
        problem = cp.Problem(cp.Minimize(cp.sum_squares(fit) + lam * cp.normNuc(x)))
    out = np.full_like(a, np.nan)
    solved = np.zeros(batch, dtype=bool)
    for i in range(batch):
        scale = 1.0 if lam == 0 else 1.0 / np.sqrt(max(obs[i].sum(), 1.0))
        weight.value = obs[i] * scale
        target.value = obs[i] * scale * a[i]
        try:
            problem.solve(solver=solver, **options)
        except cp.error.SolverError:
            continue
        if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and x.value is not None:
            out[i], solved[i] = x.value, True
    return torch.from_numpy(out), torch.from_numpy(solved)


def complete(
    values: torch.Tensor, observed: torch.Tensor, lam: float = 0.0, solver: str = "ipm"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(solutions [B, m, n], solved [B]) by `solver`: 'ipm' or a cvxpy solver name."""
    if solver not in SOLVERS:
        raise UserError(f"unknown solver '{solver}' (valid: {', '.join(SOLVERS)})")
    if solver == "ipm":
        return solve_ipm(values, observed, lam)
    return solve_cvxpy(values, observed, lam, solver)


def errors(
    pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor, keep: torch.Tensor
) -> dict:
    """L, L_obs, L_mask (masked_mse) over the matrices where `keep` [B] is True; None where
    there is nothing to average (no matrix kept, or no hidden entry)."""
    keep = torch.as_tensor(keep, dtype=torch.bool)
    if not bool(keep.any()):
        return dict.fromkeys(LOSSES)
    shape = observed.shape
    pred, target = pred.reshape(shape)[keep], target.reshape(shape)[keep]
    metrics = masked_mse(pred.double(), target.double(), observed[keep])
    values = to_floats({k: metrics[k] for k in LOSSES})
    return {k: finite_or_none(v) for k, v in values.items()}


def compare_with(pred: torch.Tensor, batch: Batch, solver: str) -> dict:
    """A model's completions `pred` [B, T] and the nuclear-norm minimiser's of the same matrices:
    their L, L_obs, L_mask, the mean nuclear norm of each completed matrix and of the truth,
    over the matrices the solver solved; also how many it did not solve and its time."""
    shape = (-1, batch.m, batch.n)
    target, observed = batch.target.reshape(shape), batch.observed.reshape(shape)
    bert = pred.reshape(shape)
    start = (time.perf_counter(), time.process_time())
    nuc, solved = complete(target, observed, 0.0, solver)
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    row = {}
    for who, x in (("bert", bert), ("nuc", nuc)):
        err = errors(x, target, observed, solved)
        row.update({f"{who}_{k}": v for k, v in err.items()})
    for who, x in (("bert", bert), ("nuc", nuc), ("true", target)):
        norms = torch.linalg.matrix_norm(x[solved].double(), ord="nuc")
        row[f"{who}_norm"] = norms.mean().item() if len(norms) else None
    row["unsolved"] = int((~solved).sum())
    row["solver_wall_s"], row["solver_cpu_s"] = wall, cpu
    return row
