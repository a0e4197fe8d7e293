"""Every training claim of the paper in miniature, over seeds, on a CPU: one command runs the lot.

    python3 -m scripts.claims run OUT [--base configs/train_mini.yaml] [--seeds 0 1 2]
    python3 -m scripts.claims run OUT --only width depth        # some claims, in this order
    python3 -m scripts.claims run OUT --only depth --variants L6  # some variants of them
    python3 -m scripts.claims report OUT                        # the tables, figures, verdicts

`run` trains, for each seed, the miniature (`--base`) and its counterpart of each claim
(docs/RESULTS.md): width ¼, ½ and 2× (FFN 4× width), depth 2, 6 and 8 layers, N(0, 1) factors
(vocabulary ±30: with ±10 an entry leaves it about once in 100,000), a 3×3 / 4×4 / 5×5 rank-1
mixture, larger matrices (6×6 and 7×7, rank 1 and 2), then on each seed's trained miniature
train_embed.py (Fig. 8: token embeddings, positions, attention, MLPs, one at a time), probe.py
(Fig. 6) and ood.py (Fig. 19). Every run has the base config's steps (a component's run
--components-steps where given): runs are capped in steps, so a busy machine changes the clock
only. Every seed's base run goes first, then each claim over all seeds. It prints its estimate
first (the base config timed here for a few steps, each run scaled by its FLOPs), then runs
`--parallel` processes at a time (default 2) with one torch thread each. It resumes: a job
whose summary.json exists is skipped, a training run continues from its last checkpoint
(train.save_every), so a stop costs at most that many steps. OUT/<claim>/<variant>_s<seed>/
holds each run.

`report` reads what ran and writes OUT/<claim>/{runs.md, summary.json, <claim>.png}: every
seed's curve, each variant's k/N (sudden drops, completion), drop step and final L_mask as
median and range, and one verdict line per claim from those numbers (rules in claims_report.py);
OUT/claims.md lists the verdicts.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainer import TrainConfig, Trainer
from utils.config import (
    REPO_ROOT,
    ToolParser,
    UserError,
    config_to_dict,
    load_config,
    number,
    repo_relative,
    resolve_path,
    run_script,
)
from utils.files import make_dir
from utils.processes import side_by_side

CLAIMS = ("width", "depth", "gaussian", "mixture", "larger", "components", "probe", "ood")
GROUPS = ["token_embeddings", "position_embeddings", "attention", "mlp"]
WIDE_VOCABULARY = ["data.min_vocab=-30.0", "data.max_vocab=30.0"]  # N(0, 1) factors' tails


@dataclass
class Job:
    claim: str
    name: str  # the run's folder name under OUT/<claim>/
    cmd: list[str]
    out: Path  # its folder; done when out/summary.json exists
    needs: Path | None = None  # a folder whose summary.json must exist first
    flops: float = 1.0  # relative to one base run (the estimate)

    @property
    def log(self) -> Path:
        return self.out / "log.txt"

    @property
    def done(self) -> bool:
        return (self.out / "summary.json").is_file()


def training_variants(base: TrainConfig) -> dict[str, dict[str, list[str]]]:
    """{claim: {variant: overrides of the base config}}; the base itself is claim 'base'."""
    w, layers = base.model.hidden_size, base.model.num_hidden_layers
    heads = base.model.num_attention_heads

    def width(d: int) -> list[str]:
        return [f"model.hidden_size={d}", f"model.intermediate_size={4 * d}"]

    widths = {f"w{d}": width(d) for d in (w // 4, w // 2, 2 * w) if d % heads == 0 and d >= heads}
    depths = {f"L{n}": [f"model.num_hidden_layers={n}"] for n in (2, 6, 8) if n != layers}
    larger = {
        f"{s}x{s}r{r}": [f"data.m={s}", f"data.n={s}", f"data.rank={r}"]
        for s in (6, 7)
        for r in (1, 2)
    }
    return {
        "base": {"base": []},
        "width": widths,
        "depth": depths,
        "gaussian": {
            "gaussian": [
                "data.distribution=gaussian",
                "data.min_vocab=-30.0",
                "data.max_vocab=30.0",
            ]
        },
        "mixture": {"mix345": ["data.rank=1", "data.sizes=[3, 4, 5]"]},
        "larger": larger,
    }


def relative_flops(base: TrainConfig, overrides: list[str], config: Path) -> float:
    """A variant's work per step over the base's: 6 × non-embedding parameters × tokens."""

    def work(cfg: TrainConfig) -> float:
        d, f, n = cfg.model.hidden_size, cfg.model.intermediate_size, cfg.model.num_hidden_layers
        tokens = cfg.data.max_tokens if not cfg.data.sizes else cfg.data.m * cfg.data.n
        return n * (4 * d * d + 2 * d * f) * tokens * cfg.train.batch_size

    return work(load_config(TrainConfig, config, overrides)) / work(base)


def plan(args: argparse.Namespace, base: TrainConfig, config: Path, out: Path) -> list[Job]:
    """Every job, in the order they start: every seed's base run first, then each claim over
    all seeds (in --only's order), so that a run cut short leaves whole claims behind it."""
    py = sys.executable
    common = ["train.resume=true", f"train.save_every={args.save_every}", "train.device=cpu"]
    common += [f"{k}" for k in args.set]
    variants = training_variants(base)
    known = {name for named in variants.values() for name in named}
    unknown = sorted(set(args.variants or []) - known)
    if unknown:
        names = " ".join(sorted(known))
        raise UserError(f"--variants {unknown[0]}: no such variant (known: {names})")
    keep = set(args.variants or known) | {"base"}

    def training(claim: str, seed: int) -> list[Job]:
        jobs = []
        for name, overrides in variants.get(claim, {}).items():
            if name not in keep:
                continue
            run = out / claim / f"{name}_s{seed}"
            folder = repo_relative(run)
            settings = [*common, *overrides, f"train.seed={seed}", f"train.out_dir={folder}"]
            try:
                load_config(TrainConfig, config, settings)
            except UserError as e:
                raise UserError(f"claim {claim}, variant {name}: {e}") from None
            cmd = [py, "train.py", "--config", str(repo_relative(config))]
            flops = relative_flops(base, overrides, config)
            jobs.append(Job(claim, run.name, cmd + [f"--{s}" for s in settings], run, None, flops))
        return jobs

    t = config_to_dict(base)["train"]
    loop = {k: v for k, v in t.items() if k not in ("seed", "device", "out_dir", "resume")}
    loop.update(resume=True, save_every=args.save_every)
    if args.components_steps is not None:
        loop["steps"] = args.components_steps

    def analysis(claim: str, seed: int) -> list[Job]:
        trained, folder = out / "base" / f"base_s{seed}", out / claim / f"s{seed}"
        paths = [f"--ckpt.run={repo_relative(trained)}", f"--out_dir={repo_relative(folder)}"]
        if claim == "components":
            cmd = [py, "train_embed.py", "--config", "configs/train_embed.yaml", *paths]
            cmd += [f"--seed={seed}", "--device=cpu"]
            cmd += [f"--groups={json_list(GROUPS)}", "--wandb.log=false"]
            cmd += [f"--train.{k}={yaml_value(v)}" for k, v in loop.items()]
            work = len(GROUPS) * loop["steps"] / base.train.steps
            return [Job(claim, f"s{seed}", cmd, folder, trained, work)]
        extra = {
            "probe": ["--probe.targets=[element,row,column]"],
            "ood": ["--data.num_samples=256", "--data.batch_size=256"],
        }.get(claim)
        if extra is None:
            return []
        cmd = [py, f"{claim}.py", "--config", f"configs/{claim}.yaml", *paths]
        cmd += ["--ckpt.step=null", "--device=cpu", *extra]
        return [Job(claim, f"s{seed}", cmd, folder, trained, 0.05)]

    jobs = [job for seed in args.seeds for job in training("base", seed)]
    for claim in dict.fromkeys(args.only or CLAIMS):  # a claim named twice runs once
        for seed in args.seeds:
            jobs += training(claim, seed) + analysis(claim, seed)
    return jobs


def json_list(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def yaml_value(value) -> str:
    """A config value as a --key=value override reads it back (YAML, one line)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def base_speed(config: Path, overrides: list[str], steps: int = 20) -> float:
    """Steps per second of the base config here, one torch thread, after a warm-up (the
    estimate's unit)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(TrainConfig, config, [*overrides, "train.device=cpu"])
        trainer = Trainer(cfg)
        for _ in range(5):
            trainer.step()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        return steps / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> list[Job]:
    config = resolve_path(args.base)
    if not config.is_file():
        raise UserError(f"--base {args.base}: no such config file")
    base = load_config(TrainConfig, config, list(args.set))
    out = make_dir(resolve_path(args.out), "OUT")
    jobs = plan(args, base, config, out)
    todo = [j for j in jobs if not j.done]
    speed = base_speed(config, list(args.set))
    hours = sum(j.flops for j in todo) * base.train.steps / speed / 3600 / args.parallel
    print(
        f"{len(todo)} of {len(jobs)} jobs to run ({len(jobs) - len(todo)} done); the base config "
        f"runs {speed:.1f} steps/s on one thread here, so about {hours:.1f} h with "
        f"{args.parallel} side by side (progress: OUT/<claim>/<run>/log.txt)",
        flush=True,
    )
    if args.dry_run:
        return todo
    failed: list[Path] = []

    def ready(job: Job) -> bool | None:
        if job.needs is None or (job.needs / "summary.json").is_file():
            return True
        return None if job.needs in failed else False  # None: never, its run failed

    def started(job: Job) -> None:
        print(f"started {job.claim}/{job.name}", flush=True)

    ended = side_by_side(todo, args.parallel, cwd=REPO_ROOT, ready=ready, on_start=started)
    for end in ended:
        name = f"{end.job.claim}/{end.job.name}"
        if end.returncode is None:
            print(f"skipped: {name} (its base run failed)", flush=True)
        elif end.returncode == 0:
            print(f"done: {name}", flush=True)
        else:
            print(f"failed ({end.returncode}): {name}", flush=True)
            failed.append(end.job.out)
    if failed:
        raise UserError(f"{len(failed)} jobs failed; see log.txt in {', '.join(map(str, failed))}")
    return todo


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ToolParser(prog="scripts.claims", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("run", "report"))
    p.add_argument("out", help="output folder (one subfolder per claim)")
    p.add_argument("--base", default="configs/train_mini.yaml", help="the miniature's config")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values")
    p.add_argument(
        "--only", nargs="+", choices=CLAIMS, default=None, help="some claims only, in this order"
    )
    p.add_argument(
        "--variants", nargs="+", default=None, help="some training variants only (e.g. w16 L6)"
    )
    p.add_argument(
        "--components-steps",
        type=number(int, at_least=1),
        default=None,
        help="steps of each component's run (Fig. 8; default: the base config's steps)",
    )
    p.add_argument("--set", nargs="+", default=[], help="KEY=VALUE overrides of every run")
    p.add_argument(
        "--parallel", type=number(int, at_least=1), default=2, help="jobs at once (one thread each)"
    )
    p.add_argument(
        "--save-every",
        type=number(int, at_least=1),
        default=2000,
        help="checkpoint every this many steps (what a hard stop can lose)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the estimate and stop")
    return p.parse_args(argv)


def main(argv: list[str]):
    args = parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds repeats a seed ({' '.join(map(str, args.seeds))})")
    bad = [s for s in args.set if "=" not in s]
    if bad:
        raise UserError(f"--set {bad[0]!r}: expected KEY=VALUE")
    if args.command == "run":
        return run(args)
    from scripts.claims_report import report

    return report(resolve_path(args.out), args.seeds)


if __name__ == "__main__":
    run_script(main)
