"""Nuclear-norm minimisation, the convex baseline the BERT is compared with.

    python3 cvx_nuc_norm.py                        # 256 7×7 rank-2 matrices, 30% hidden
    python3 cvx_nuc_norm.py --num_matrices=512 --lams 0.001 0.01 --solver=CLARABEL

Solves, for each matrix A with observed set Ω, the exact problem

    min ‖X‖*  subject to  X = A on Ω

and the regularised one, for each λ in `--lams`,

    min (1/|Ω|)‖P_Ω(X − A)‖²_F + λ‖X‖*,

and prints the table λ | L_obs | L_mask | L (the exact problem first), the losses measured
against the rounded matrix the BERT is trained on. This is the authors' `cvx_nuc_norm.py`
table; `compare_nuc_bert.py` (paper Fig. 3) and `ood.py` (Fig. 19) use the same solvers.
Writes table.md and summary.json to `--out_dir`.

The solvers (`--solver`: ipm, our batched interior-point method, or a cvxpy one) and how they
were checked are in nuclear_norm.py. The command-line flags are plain (the authors' script had
them too), not a YAML config.
"""

from __future__ import annotations

import argparse
import time

from data import DataConfig, MatrixSampler
from nuclear_norm import SOLVERS, complete, errors
from utils.config import UserError, repo_relative, resolve_path
from utils.results import Table, write_results

LAMS = [0.0005, 0.001, 0.0015, 0.00175, 0.002, 0.005, 0.01]  # the authors' λ list


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each flag's default after its help."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--num_matrices", type=int, default=256, help="matrices solved (N)")
    p.add_argument("--m", type=int, default=7, help="rows of each matrix")
    p.add_argument("--n", type=int, default=7, help="columns of each matrix")
    p.add_argument("--rank", type=int, default=2, help="rank r of X = U Vᵀ (Unif[-1, 1] factors)")
    p.add_argument("--p_mask", type=float, default=0.3, help="probability an entry is hidden")
    p.add_argument(
        "--lams", type=float, nargs="*", default=LAMS, help="λ of the regularised problem"
    )
    p.add_argument("--solver", default="ipm", choices=SOLVERS, help="ipm (ours) or a cvxpy one")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled matrices")
    p.add_argument(
        "--out_dir", default="results/cvx_nuc_norm", help="output folder (relative: repo root)"
    )
    args = p.parse_args(argv)
    if args.num_matrices < 1:
        p.error(f"--num_matrices must be ≥ 1, got {args.num_matrices}")
    if any(lam <= 0 for lam in args.lams):
        p.error(f"every --lams value must be > 0 (the exact problem is always solved): {args.lams}")
    try:
        data_config(args)
    except UserError as e:
        p.error(str(e).replace("'data.", "'--").replace("data.", "--"))
    return args


def data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(m=args.m, n=args.n, rank=args.rank, p_mask=args.p_mask)


def main(args: argparse.Namespace) -> dict:
    out_dir = resolve_path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch = MatrixSampler(data_config(args), "cpu", seed=args.seed).sample(args.num_matrices)
    shape = (-1, batch.m, batch.n)
    values, observed = batch.target.reshape(shape), batch.observed.reshape(shape)
    rows = []
    for lam in [0.0, *args.lams]:
        start = time.perf_counter()
        x, solved = complete(values, observed, lam, args.solver)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "problem": "exact" if lam == 0 else "regularised",
                "lam": lam,
                **errors(x, values, observed, solved),
                "unsolved": int((~solved).sum()),
                "time_s": seconds,
            }
        )
    columns = ["problem", "lam", "loss_obs", "loss_mask", "loss", "unsolved", "time_s"]
    table = Table(rows, columns)
    summary = {"args": vars(args), "rows": rows}
    write_results(out_dir, summary, {"table.md": [table]})
    print(
        f"{args.num_matrices} matrices {args.m}×{args.n}, rank {args.rank}, "
        f"p_mask {args.p_mask}, solver {args.solver}"
    )
    print(table.markdown() + f"outputs in {repo_relative(out_dir)}")
    return summary


if __name__ == "__main__":
    main(parse_args())
