"""Firing rate of every LIF layer at each time step and averaged over T, of a trained run (Fig. 5).

    python -m experiments.firing_rates --workdir runs/digits --out DIR

Runs the run's best checkpoint, with the config recorded in its workdir, in
evaluation mode (running BatchNorm statistics) on the first --num_batches
batches of its test split. A --config given as well must agree with the
record (as a resumed run must; its data_dir may differ). The rate of a layer
at step t is the fraction of its neurons (over examples and positions) that
spike at t. Writes DIR/firing_rates.csv (model, method, layer_index, layer,
timestep, firing_rate; timestep "mean" = averaged over T),
DIR/firing_rates.png (layers × steps heat map; mean rate per layer) and
prints the per-layer table.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from experiments import cli, common, report

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the trained run (its best checkpoint is used).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional: the run's config, checked against its record.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Test batches to average over.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["workdir", "out"])

COLUMNS = ["model", "method", "layer_index", "layer", "timestep", "firing_rate"]


def main(argv):
    common.start(argv)
    from ratebp_jax import analysis, plotting

    model, variables, split, config = common.trained_run(_WORKDIR.value, _CONFIG.value)
    rates, _ = common.mean_over_test_batches(
        split, _NUM_BATCHES.value, config.dtype,
        lambda images: analysis.firing_rates(model, variables, images, timesteps=config.timesteps))
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
    cli.run(main)
