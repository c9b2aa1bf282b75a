"""Synaptic operations and estimated energy per image at inference, per layer, against the ANN.

From a trained run (the config recorded in its workdir, its best checkpoint,
the first --num_batches batches of its test split; a --config given as well
must agree with the record):
    python -m experiments.energy --workdir runs/digits --out DIR
At initialisation, on random uniform images:
    python -m experiments.energy --model resnet18 --timesteps 4 --out DIR

Counts each conv and linear layer of the evaluation forward pass (running
BatchNorm statistics) with ratebp_jax.analysis.operation_counts: the
accumulates (ACs) that spikes trigger, the multiply-accumulates (MACs) of
layers fed real values (the encoding conv on the image, a layer after an
average pool), and the MACs of the ANN of the same architecture; energy with
E_AC = 0.9 pJ and E_MAC = 4.6 pJ (Horowitz, ISSCC 2014; --e_ac_pj, --e_mac_pj).
The ANN's MACs are counted as thop/ptflops and SNN papers count them (the
padded border included); beside our exact spike-driven counts, the
literature's per-layer estimate (input firing rate × the ANN's MACs × T), so
that both conventions of the SNN/ANN ratio can be read.
Writes DIR/energy.csv (model, method, timesteps, layer_index, layer,
input_rate, acs, macs, ann_macs, energy_pj, ann_energy_pj,
ann_macs_padding_free, literature_ops, literature_energy_pj; per image),
DIR/energy.png (operations and energy per layer, SNN against ANN) and
DIR/energy.md (the table with totals and both SNN/ANN energy ratios), and
prints the table.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from experiments import cli, common, report

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run; its best checkpoint is used.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional, with --workdir: the run's config, checked "
                                          "against its record.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Test batches to average over (a trained run).")
_MODEL = flags.DEFINE_string("model", "resnet18", "Model at initialisation (without --workdir).")
_MODEL_MODULE = flags.DEFINE_string("model_module", "", "A module to import first, which registers --model "
                                    "(ratebp_jax.models.register).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size at initialisation.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Input height = width at initialisation (0: the model's).")
_TIMESTEPS = flags.DEFINE_integer("timesteps", 4, "T at initialisation (a trained run: its own).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initial parameters and the random batch.")
_E_AC = flags.DEFINE_float("e_ac_pj", 0.9, "Energy of an accumulate, pJ.")
_E_MAC = flags.DEFINE_float("e_mac_pj", 4.6, "Energy of a multiply-accumulate, pJ.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["out"])

COLUMNS = ["model", "method", "timesteps", "layer_index", "layer", "input_rate", "acs", "macs", "ann_macs",
           "energy_pj", "ann_energy_pj", "ann_macs_padding_free", "literature_ops", "literature_energy_pj"]
COUNTS = COLUMNS[5:]  # per image: averaged over batches, summed over layers


def measure(trained: bool) -> tuple[str, str | None, int, str, list[dict]]:
    """(model name, method or None, T, what was measured, rows) of the flags: of the run in --workdir
    (trained) or of --model at initialisation."""
    import numpy as np

    from ratebp_jax import analysis

    def count(model, variables, images, timesteps):
        return analysis.operation_counts(model, variables, images, timesteps=timesteps, e_ac_pj=_E_AC.value,
                                         e_mac_pj=_E_MAC.value)

    if trained:
        model, variables, split, config = common.trained_run(_WORKDIR.value, _CONFIG.value)
        # per layer: its COUNTS as a vector, averaged over the batches
        means, examples = common.mean_over_test_batches(split, _NUM_BATCHES.value, config.dtype, lambda images: {
            row["layer"]: np.array([row[k] for k in COUNTS]) for row in count(model, variables, images,
                                                                             config.timesteps)})
        rows = [{"layer": layer, **dict(zip(COUNTS, map(float, mean)))} for layer, mean in means.items()]
        return (config.model, config.method, config.timesteps,
                f"{config.dataset}, {examples} test images, best checkpoint", rows)
    model, variables, images, _ = common.random_init(_MODEL.value, batch_size=_BATCH.value,
                                                     image_size=_IMAGE_SIZE.value, seed=_SEED.value,
                                                     model_module=_MODEL_MODULE.value)
    rows = count(model, variables, images, _TIMESTEPS.value)
    h, w = images.shape[1:3]
    return _MODEL.value, None, _TIMESTEPS.value, f"{_BATCH.value} random {h}×{w} images, initialisation", rows


def table(rows: list[dict]) -> str:
    """The Markdown table: per layer and the total, operations in millions and energy in µJ per image."""
    def display(layer, rate, r):
        return {"layer": layer, "input rate": rate, "ACs (M)": r["acs"] / 1e6, "MACs (M)": r["macs"] / 1e6,
                "ANN MACs (M)": r["ann_macs"] / 1e6, "energy (µJ)": r["energy_pj"] / 1e6,
                "ANN energy (µJ)": r["ann_energy_pj"] / 1e6, "literature ops (M)": r["literature_ops"] / 1e6,
                "literature energy (µJ)": r["literature_energy_pj"] / 1e6}

    total = {k: sum(r[k] for r in rows) for k in COUNTS}
    lines = [display(r["layer"], r["input_rate"], r) for r in rows] + [display("total", None, total)]
    return report.table(lines, list(lines[0]))


def main(argv):
    common.start(argv)
    trained = common.check_mode(initial_only=["model", "batch_size", "image_size", "timesteps", "seed"],
                                trained_only=["num_batches"])
    from ratebp_jax import plotting

    name, method, timesteps, what, rows = measure(trained)
    csv_rows = [{"model": name, "method": method, "timesteps": timesteps, "layer_index": i, **row}
                for i, row in enumerate(rows)]
    report.write_csv(os.path.join(_OUT.value, "energy.csv"), csv_rows, COLUMNS)
    title = f"{name}{f' ({method})' if method else ''}, T={timesteps}: {what}"
    plotting.save(plotting.plot_energy(rows, title), os.path.join(_OUT.value, "energy.png"))
    snn, ann = sum(r["energy_pj"] for r in rows), sum(r["ann_energy_pj"] for r in rows)
    literature = sum(r["literature_energy_pj"] for r in rows)
    text = (f"Operations and energy per image of {title}; E_AC = {_E_AC.value} pJ, E_MAC = {_E_MAC.value} pJ "
            f"(Horowitz, ISSCC 2014)\n\n{table(rows)}\n\n"
            f"SNN / ANN energy: {snn / ann:.3f} ({snn / 1e6:.4g} µJ against {ann / 1e6:.4g} µJ per image)\n"
            f"SNN / ANN energy, the literature's estimate (input rate × ANN MACs × T): {literature / ann:.3f} "
            f"({literature / 1e6:.4g} µJ)\n")
    with open(os.path.join(_OUT.value, "energy.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {_OUT.value}/energy.csv, energy.png, energy.md")


if __name__ == "__main__":
    cli.run(main)
