"""Plumbing every script shares, one room per concern; import a name from its room
(`from utils.runs import checkpoints`): this package re-exports nothing. Each room's docstring
says what it holds; lowest first, and a room imports only rooms above it in this list:

    config.py    strict YAML configs, `--section.key=value` overrides, `--help`, `cli`
    drop.py      the sudden drop: plateau and drop steps of a loss curve
    floats.py    device tensors to the plain numbers a log or summary holds
    geometry.py  embeddings' geometry (norms, principal components, t-SNE, silhouettes) and the
                 row-or-column rule
    files.py     folders, atomic writes, JSON
    hf.py        HuggingFace-format model folders (export and read back)
    runs.py      a training run's folder: checkpoints, metrics log, the no-overwrite check
    device.py    seeds, the device and its precision, memory errors as one line
    profiling.py where a training step's time goes (bench.py --bench.profile)
    signals.py   Ctrl-C and SIGTERM as a request to stop after the current step
    processes.py commands side by side, a few at a time, one log each (sweeps, the claims)
    plots.py     figure style, saving, the pyplot entry, loss curves, attention grids
    tracking.py  Weights & Biases
    results.py   an output folder's config.yaml, tables and summary.json; printed summaries
"""
