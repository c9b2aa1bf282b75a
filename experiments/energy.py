"""Synaptic operations and estimated energy per image at inference, per layer, against the ANN.

From a trained run (its model and T, its best checkpoint, the first
--num_batches batches of its test split):
    python -m experiments.energy --config configs/digits.py --workdir runs/digits --out DIR
At initialisation, on random uniform images:
    python -m experiments.energy --model resnet18 --timesteps 4 --out DIR

Counts each conv and linear layer of the evaluation forward pass (running
BatchNorm statistics) with ratebp_jax.analysis.operation_counts: the
accumulates (ACs) that spikes trigger, the multiply-accumulates (MACs) of
layers fed real values (the encoding conv on the image, a layer after an
average pool), and the MACs of the ANN of the same architecture; energy with
E_AC = 0.9 pJ and E_MAC = 4.6 pJ (Horowitz, ISSCC 2014; --e_ac_pj, --e_mac_pj).
Writes DIR/energy.csv (model, method, timesteps, layer_index, layer,
input_rate, acs, macs, ann_macs, energy_pj, ann_energy_pj; per image),
DIR/energy.png (operations and energy per layer, SNN against ANN) and
DIR/energy.md (the table with totals and the SNN/ANN energy ratio), and prints
the table.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config of a trained run (with --workdir).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of that run; its best checkpoint is used.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Test batches to average over (a trained run).")
_MODEL = flags.DEFINE_string("model", "resnet18", "Model at initialisation (without --config).")
_MODEL_MODULE = flags.DEFINE_string("model_module", "", "A module to import first, which registers --model "
                                    "(ratebp_jax.models.register).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size at initialisation.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Input height = width at initialisation (0: the model's).")
_TIMESTEPS = flags.DEFINE_integer("timesteps", 4, "T at initialisation (with --config: its T).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initial parameters and the random batch.")
_E_AC = flags.DEFINE_float("e_ac_pj", 0.9, "Energy of an accumulate, pJ.")
_E_MAC = flags.DEFINE_float("e_mac_pj", 4.6, "Energy of a multiply-accumulate, pJ.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")

COLUMNS = ["model", "method", "timesteps", "layer_index", "layer", "input_rate", "acs", "macs", "ann_macs",
           "energy_pj", "ann_energy_pj"]
COUNTS = COLUMNS[5:]  # per image: averaged over batches, summed over layers


def weighted_mean(batches: list[tuple[list[dict], int]]) -> list[dict]:
    """Rows of operation_counts averaged over batches [(rows, examples)], weighted by examples."""
    total = sum(n for _, n in batches)
    layers = [row["layer"] for row in batches[0][0]]
    return [{"layer": layer, **{k: sum(rows[i][k] * n for rows, n in batches) / total for k in COUNTS}}
            for i, layer in enumerate(layers)]


def measure() -> tuple[str, str | None, int, str, list[dict]]:
    """(model name, method or None, T, what was measured, rows) of the flags."""
    import jax
    import numpy as np

    from ratebp_jax import analysis, models, train

    def count(model, variables, images, timesteps):
        return analysis.operation_counts(model, variables, images, timesteps=timesteps, e_ac_pj=_E_AC.value,
                                         e_mac_pj=_E_MAC.value)

    if _CONFIG.value is not None:
        config = _CONFIG.value
        model, variables, split = train.load_trained(config, _WORKDIR.value)
        batches = []
        for i, batch in enumerate(split.epoch(0)):
            if i >= _NUM_BATCHES.value:
                break
            real = batch["mask"] > 0  # eval batches are padded at the end of the split
            images = np.asarray(batch["image"][real], config.dtype)
            batches.append((count(model, variables, images, config.timesteps), len(images)))
        examples = sum(n for _, n in batches)
        return (config.model, config.method, config.timesteps,
                f"{config.dataset}, {examples} test images, best checkpoint", weighted_mean(batches))
    if _MODEL_MODULE.value:
        importlib.import_module(_MODEL_MODULE.value)
    h, w, c = models.input_shape(_MODEL.value)
    if _IMAGE_SIZE.value:
        h = w = _IMAGE_SIZE.value
    model = models.create(_MODEL.value, num_classes=10, in_channels=c)
    key = jax.random.key(_SEED.value)
    images = jax.random.uniform(jax.random.fold_in(key, 1), (_BATCH.value, h, w, c))
    variables = models.init(model, key, images, timesteps=1)
    rows = count(model, variables, images, _TIMESTEPS.value)
    return _MODEL.value, None, _TIMESTEPS.value, f"{_BATCH.value} random {h}×{w} images, initialisation", rows


def table(rows: list[dict]) -> str:
    """The Markdown table: per layer and the total, operations in millions and energy in µJ per image."""
    def display(layer, rate, r):
        return {"layer": layer, "input rate": rate, "ACs (M)": r["acs"] / 1e6, "MACs (M)": r["macs"] / 1e6,
                "ANN MACs (M)": r["ann_macs"] / 1e6, "energy (µJ)": r["energy_pj"] / 1e6,
                "ANN energy (µJ)": r["ann_energy_pj"] / 1e6}

    total = {k: sum(r[k] for r in rows) for k in COUNTS}
    lines = [display(r["layer"], r["input_rate"], r) for r in rows] + [display("total", None, total)]
    return report.table(lines, list(lines[0]))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    report.quiet_library_logs()
    if not _OUT.value:
        raise app.UsageError("--out is required")
    if (_CONFIG.value is None) != (_WORKDIR.value is None):
        raise app.UsageError("--config and --workdir go together (a trained run); without them: --model")
    from ratebp_jax import plotting

    try:
        name, method, timesteps, what, rows = measure()
    except FileNotFoundError as error:  # no checkpoint, or the dataset is not there
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    csv_rows = [{"model": name, "method": method, "timesteps": timesteps, "layer_index": i, **row}
                for i, row in enumerate(rows)]
    report.write_csv(os.path.join(_OUT.value, "energy.csv"), csv_rows, COLUMNS)
    title = f"{name}{f' ({method})' if method else ''}, T={timesteps}: {what}"
    plotting.save(plotting.plot_energy(rows, title), os.path.join(_OUT.value, "energy.png"))
    snn, ann = sum(r["energy_pj"] for r in rows), sum(r["ann_energy_pj"] for r in rows)
    text = (f"Operations and energy per image of {title}; E_AC = {_E_AC.value} pJ, E_MAC = {_E_MAC.value} pJ "
            f"(Horowitz, ISSCC 2014)\n\n{table(rows)}\n\n"
            f"SNN / ANN energy: {snn / ann:.3f} ({snn / 1e6:.4g} µJ against {ann / 1e6:.4g} µJ per image)\n")
    with open(os.path.join(_OUT.value, "energy.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {_OUT.value}/energy.csv, energy.png, energy.md")


if __name__ == "__main__":
    app.run(main)
