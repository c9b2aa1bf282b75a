"""Firing rate of every LIF layer at each time step and averaged over T, of a trained run (Fig. 5).

    python -m experiments.firing_rates --config configs/digits.py --workdir runs/digits --out DIR

Runs the run's best checkpoint in evaluation mode (running BatchNorm
statistics) on the first --num_batches batches of its test split. The rate
of a layer at step t is the fraction of its neurons (over examples and
positions) that spike at t. Writes DIR/firing_rates.csv (model, method,
layer_index, layer, timestep, firing_rate; timestep "mean" = averaged over
T), DIR/firing_rates.png (layers × steps heat map; mean rate per layer) and
prints the per-layer table.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config of the trained run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of that run (its best checkpoint is used).")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Test batches to average over.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir", "out"])

COLUMNS = ["model", "method", "layer_index", "layer", "timestep", "firing_rate"]


def mean_firing_rates(config, workdir: str, num_batches: int) -> dict:
    """{layer: float [T]}, averaged over the real examples of the first num_batches test batches."""
    import numpy as np

    from ratebp_jax import analysis, train

    model, variables, split = train.load_trained(config, workdir)
    totals, count = None, 0
    for i, batch in enumerate(split.epoch(0)):
        if i >= num_batches:
            break
        real = batch["mask"] > 0  # eval batches are padded at the end of the split
        images = np.asarray(batch["image"][real], config.dtype)
        rates = analysis.firing_rates(model, variables, images, timesteps=config.timesteps)
        totals = {k: len(images) * v + (0 if totals is None else totals[k]) for k, v in rates.items()}
        count += len(images)
    return {layer: total / count for layer, total in totals.items()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    report.quiet_library_logs()
    from ratebp_jax import plotting

    config = _CONFIG.value
    try:
        rates = mean_firing_rates(config, _WORKDIR.value, _NUM_BATCHES.value)
    except FileNotFoundError as error:  # no checkpoint, or the dataset is not there
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    rows = []
    for index, (layer, per_step) in enumerate(rates.items()):
        base = {"model": config.model, "method": config.method, "layer_index": index, "layer": layer}
        rows += [{**base, "timestep": t + 1, "firing_rate": float(r)} for t, r in enumerate(per_step)]
        rows.append({**base, "timestep": "mean", "firing_rate": float(per_step.mean())})
    report.write_csv(os.path.join(_OUT.value, "firing_rates.csv"), rows, COLUMNS)
    title = f"{config.model} ({config.method}, T={config.timesteps}) on {config.dataset}"
    plotting.save(plotting.plot_firing_rates(rates, title), os.path.join(_OUT.value, "firing_rates.png"))
    print(report.table([r for r in rows if r["timestep"] == "mean"], ["layer_index", "layer", "firing_rate"]))
    print(f"wrote {_OUT.value}/firing_rates.csv, firing_rates.png")


if __name__ == "__main__":
    app.run(main)
