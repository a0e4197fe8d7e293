"""Train the BERT to complete low-rank matrices and watch the plateau and the sudden drop.

    python3 train.py --config configs/train.yaml            # the paper's setting (a GPU)
    python3 train.py --config configs/train_tiny.yaml       # the CPU demo
    python3 train.py --config configs/train.yaml --train.steps=20000 --wandb.log=true

Each step draws a fresh batch (there is no fixed data set, so the training loss is a test loss),
predicts every entry, and takes one Adam step on the MSE over all entries (paper Fig. 1/2), at a
constant lr as in the paper unless `train.lr_schedule` says otherwise.
Every `log_every` steps it logs loss, L_obs, L_mask, the mean |prediction| at hidden entries and an
eval loss on fresh matrices; the host waits for the GPU only on those steps. With `train.progress`
(on by default) it also logs the hidden progress that precedes the drop (Gopalani & Hu, 2025; an
extension, not in the matrix-completion paper), on one fixed batch of `num_eval` matrices:
    att_row, att_col, att_self  [layer][head] share of each head's attention on the query's row,
                                its column, itself (measures.attention_shares, as att_maps.py);
    collapse                    mean |cosine| between the hidden states of different positions,
                                after the embeddings and after each layer (representation collapse);
    copy_mse                    the Table 1 test as one number: the MSE between the output at
                                hidden entries and the value written there instead of MASK
                                (COPY_VALUE as its token encodes it, rounded to data.prec;
                                ≈ 0 for a model that copies its input).
Writes to `out_dir`: config.yaml, metrics.jsonl, loss.png (losses; with progress also each head's
share and the collapse), step_NNNNNN.pt checkpoints and summary.json (plateau level, the step
where the drop starts, final losses, and each head's role with the step it took it on).
Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint, the summary and the plot, and
prints the command that resumes the run.

The machinery (the Trainer, the loop `fit`) is in trainer.py; what is trained and measured (the
loss, the eval, the hidden progress, the summary, loss.png) is task.py's MatrixCompletion.
"""

from __future__ import annotations

from pathlib import Path

from trainer import BATCH_TOO_BIG, MODEL_TOO_BIG, TrainConfig, Trainer, fit
from utils.config import cli, repo_relative
from utils.device import allocation_errors, choose_device
from utils.drop import describe_drop
from utils.results import print_rows
from utils.runs import prepare_run_dir


def print_summary(summary: dict, out_dir: Path) -> None:
    print_rows(
        [
            ("plateau loss", summary["plateau_loss"]),
            ("drop", describe_drop(summary)),
            ("final loss", summary["final_loss"]),
            ("final L_obs", summary["final_loss_obs"]),
            ("final L_mask", summary["final_loss_mask"]),
            ("steps/s (last interval)", summary["steps_per_s"]),
            ("wall time (s)", summary["wall_time_s"]),
        ]
    )
    print(f"outputs in {repo_relative(out_dir)}")


def main(cfg: TrainConfig) -> dict:
    # The run folder: a bad device stops the run before any file is touched; a folder holding
    # another run is refused; with train.resume, the latest checkpoint.
    choose_device(cfg.train.device)
    out_dir, resume_from = prepare_run_dir(cfg)
    # The BERT, Adam, the samplers and the paper's task (task.MatrixCompletion).
    with allocation_errors(MODEL_TOO_BIG):
        trainer = Trainer(cfg)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(
        f"{n_params / 1e6:.2f}M parameters on {trainer.device} ({trainer.precision}); "
        f"writing to {repo_relative(out_dir)}"
    )
    # The loop: sample, step, log, measure, save, stop (trainer.fit).
    with allocation_errors(BATCH_TOO_BIG):
        summary = fit(cfg, trainer, out_dir, resume_from)
    print_summary(summary, out_dir)
    return summary


if __name__ == "__main__":
    cli(main, TrainConfig, __doc__, "configs/train.yaml")
