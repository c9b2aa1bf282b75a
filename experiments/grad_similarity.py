"""How close rate-based gradients are to BPTT's: cosine similarity per layer and overall (Fig. 3(d)).

At initialisation, on random uniform images (SPEC oracle 4's setting):
    python -m experiments.grad_similarity --model resnet18 --timesteps 2,4,6 --seeds 0,1 --out DIR
From a trained run (its model and T; a batch of its test split):
    python -m experiments.grad_similarity --config configs/digits.py --workdir runs/digits --out DIR

For each T and seed, the weight gradients of the methods of each pair
(--pairs rate_m:bptt_m,rate_s:bptt_s) on one batch are compared: overall (the
kernels of all conv and linear layers as one vector) and per layer in network
order. The reference's values at initialisation (SPEC oracle 4), rate_m vs
bptt_m at T = 2 / 4 / 6: resnet18 0.46 / 0.37 / 0.35, vgg11 0.78 / 0.75 / 0.78.
Writes DIR/grad_similarity.csv (model, pair, timesteps, seed, layer,
cosine), DIR/grad_similarity.png (overall vs T; per layer) and prints the
overall table (mean and spread over seeds).
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config of a trained run (with --workdir).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of that run; its best checkpoint is used.")
_MODEL = flags.DEFINE_string("model", "resnet18", "Model at initialisation (without --config).")
_MODEL_MODULE = flags.DEFINE_string("model_module", "", "A module to import first, which registers --model "
                                    "(ratebp_jax.models.register).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Input height = width at initialisation (0: the model's).")
_TIMESTEPS = flags.DEFINE_list("timesteps", ["2", "4", "6"], "Values of T (with --config: its T).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds of the initial parameters and the random batch.")
_PAIRS = flags.DEFINE_list("pairs", ["rate_m:bptt_m", "rate_s:bptt_s"], "Method pairs A:B to compare.")
_SLTT_K = flags.DEFINE_integer("sltt_k", 1, "K of sltt_k (at most T; with --config: its sltt_k if set).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")

COLUMNS = ["model", "pair", "timesteps", "seed", "layer", "cosine"]


def batches():
    """Yields (model name, model, variables, images, labels, T, seed) for each measurement."""
    import jax
    import numpy as np

    from ratebp_jax import models, train

    if _CONFIG.value is not None:
        config = _CONFIG.value
        model, variables, split = train.load_trained(config, _WORKDIR.value)
        batch = next(split.epoch(0))
        images = np.asarray(batch["image"][:_BATCH.value], config.dtype)
        yield config.model, model, variables, images, batch["label"][:_BATCH.value], config.timesteps, "trained"
        return
    if _MODEL_MODULE.value:
        importlib.import_module(_MODEL_MODULE.value)
    h, w, c = models.input_shape(_MODEL.value)
    if _IMAGE_SIZE.value:
        h = w = _IMAGE_SIZE.value
    model = models.create(_MODEL.value, num_classes=10, in_channels=c)
    for seed in (int(s) for s in _SEEDS.value):
        key = jax.random.key(seed)
        images = jax.random.uniform(jax.random.fold_in(key, 1), (_BATCH.value, h, w, c))  # as SPEC oracle 4
        labels = jax.random.randint(jax.random.fold_in(key, 2), (_BATCH.value,), 0, 10)
        variables = models.init(model, key, images, timesteps=1)  # the same parameters at every T
        for t in sorted(int(t) for t in _TIMESTEPS.value):
            yield _MODEL.value, model, variables, images, labels, t, seed


def overall_table(rows: list[dict]) -> list[dict]:
    """Per (pair, T): the mean, min and max of the overall cosine over seeds."""
    groups = {}
    for row in rows:
        if row["layer"] == "overall":
            groups.setdefault((row["pair"], row["timesteps"]), []).append(row["cosine"])
    return [{"pair": pair, "timesteps": t, "seeds": len(v), "mean": statistics.mean(v), "min": min(v), "max": max(v)}
            for (pair, t), v in groups.items()]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    report.quiet_library_logs()
    if not _OUT.value:
        raise app.UsageError("--out is required")
    if (_CONFIG.value is None) != (_WORKDIR.value is None):
        raise app.UsageError("--config and --workdir go together (a trained run); without them: --model")
    from ratebp_jax import analysis, methods, plotting

    pairs = [tuple(p.split(":")) for p in _PAIRS.value]
    bad = [p for p in pairs if len(p) != 2 or not set(p) <= set(methods.METHODS)]
    if bad:
        raise app.UsageError(f"--pairs: {bad} are not A:B with A, B in {list(methods.METHODS)}")
    rows = []
    try:
        for name, model, variables, images, labels, t, seed in batches():
            k = (_CONFIG.value.get("sltt_k") if _CONFIG.value is not None else None) or _SLTT_K.value
            result = analysis.grad_similarity(model, variables, images, labels, timesteps=t, pairs=pairs, k=k)
            for (a, b), cosines in result.items():
                rows += [{"model": name, "pair": f"{a}:{b}", "timesteps": t, "seed": seed, "layer": layer,
                          "cosine": value} for layer, value in cosines.items()]
                print(f"T={t} seed={seed} {a} vs {b}: overall {cosines['overall']:.3f}", flush=True)
    except FileNotFoundError as error:  # no checkpoint, or the dataset is not there
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    report.write_csv(os.path.join(_OUT.value, "grad_similarity.csv"), rows, COLUMNS)
    overall = overall_table(rows)
    plotting.save(plotting.plot_grad_similarity(rows, overall), os.path.join(_OUT.value, "grad_similarity.png"))
    print(report.table(overall, ["pair", "timesteps", "seeds", "mean", "min", "max"]))
    print(f"wrote {_OUT.value}/grad_similarity.csv, grad_similarity.png")


if __name__ == "__main__":
    app.run(main)
