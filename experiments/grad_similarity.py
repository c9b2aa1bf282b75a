"""How close rate-based gradients are to BPTT's: cosine similarity per layer and overall (Fig. 3(d)).

At initialisation, on random uniform images (SPEC oracle 4's setting):
    python -m experiments.grad_similarity --model resnet18 --timesteps 2,4,6 --seeds 0,1 --out DIR
From a trained run (the config recorded in its workdir, its best checkpoint,
a batch of its test split; a --config given as well must agree with the record):
    python -m experiments.grad_similarity --workdir runs/digits --out DIR

For each T and seed, the weight gradients of the methods of each pair
(--pairs rate_m:bptt_m,rate_s:bptt_s) on one batch are compared: overall (the
kernels of all conv and linear layers as one vector) and per layer in network
order. The reference's values at initialisation are SPEC oracle 4's; the
README sets ours beside them.
Writes DIR/grad_similarity.csv (model, pair, timesteps, seed, layer,
cosine), DIR/grad_similarity.png (overall vs T; per layer) and prints the
overall table (mean and spread over seeds).
"""

from __future__ import annotations

import os
import statistics

from absl import flags
from ml_collections import config_flags

from experiments import cli, common, report

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run; its best checkpoint is used.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional, with --workdir: the run's config, checked "
                                          "against its record.")
_MODEL = flags.DEFINE_string("model", "resnet18", "Model at initialisation (without --workdir).")
_MODEL_MODULE = flags.DEFINE_string("model_module", "", "A module to import first, which registers --model "
                                    "(ratebp_jax.models.register).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Input height = width at initialisation (0: the model's).")
_TIMESTEPS = flags.DEFINE_list("timesteps", ["2", "4", "6"], "Values of T at initialisation (a trained run: "
                               "its own).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds of the initial parameters and the random batch.")
_PAIRS = flags.DEFINE_list("pairs", ["rate_m:bptt_m", "rate_s:bptt_s"], "Method pairs A:B to compare.")
_SLTT_K = flags.DEFINE_integer("sltt_k", 1, "K of sltt_k (at most T; a trained run: its sltt_k if set).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["out"])

COLUMNS = ["model", "pair", "timesteps", "seed", "layer", "cosine"]


def batches(trained: bool):
    """(model name, model, variables, images, labels, T, sltt_k's K, seed) of each measurement: of the
    run in --workdir (trained) or of --model at initialisation."""
    if trained:
        model, variables, split, config = common.trained_run(_WORKDIR.value, _CONFIG.value)
        images, labels = next(common.first_test_batches(split, 1, config.dtype))
        yield (config.model, model, variables, images[:_BATCH.value], labels[:_BATCH.value], config.timesteps,
               config.get("sltt_k") or _SLTT_K.value, "trained")
        return
    for seed in (int(s) for s in _SEEDS.value):
        model, variables, images, labels = common.random_init(_MODEL.value, batch_size=_BATCH.value,
                                                              image_size=_IMAGE_SIZE.value, seed=seed,
                                                              model_module=_MODEL_MODULE.value)
        for t in sorted(int(t) for t in _TIMESTEPS.value):  # the same parameters at every T
            yield _MODEL.value, model, variables, images, labels, t, _SLTT_K.value, seed


def overall_table(rows: list[dict]) -> list[dict]:
    """Per (pair, T): the mean, min and max of the overall cosine over seeds."""
    groups = {}
    for row in rows:
        if row["layer"] == "overall":
            groups.setdefault((row["pair"], row["timesteps"]), []).append(row["cosine"])
    return [{"pair": pair, "timesteps": t, "seeds": len(v), "mean": statistics.mean(v), "min": min(v), "max": max(v)}
            for (pair, t), v in groups.items()]


def main(argv):
    common.start(argv)
    trained = common.check_mode(initial_only=["model", "image_size", "timesteps", "seeds"])
    from ratebp_jax import analysis, methods, plotting

    pairs = [tuple(p.split(":")) for p in _PAIRS.value]
    bad = [p for p in pairs if len(p) != 2 or not set(p) <= set(methods.METHODS)]
    if bad:
        cli.fail(f"--pairs: {bad} are not A:B with A, B in {list(methods.METHODS)}")
    rows = []
    for name, model, variables, images, labels, t, k, seed in batches(trained):
        result = analysis.grad_similarity(model, variables, images, labels, timesteps=t, pairs=pairs, k=k)
        for (a, b), cosines in result.items():
            rows += [{"model": name, "pair": f"{a}:{b}", "timesteps": t, "seed": seed, "layer": layer,
                      "cosine": value} for layer, value in cosines.items()]
            print(f"T={t} seed={seed} {a} vs {b}: overall {cosines['overall']:.3f}", flush=True)
    report.write_csv(os.path.join(_OUT.value, "grad_similarity.csv"), rows, COLUMNS)
    overall = overall_table(rows)
    plotting.save(plotting.plot_grad_similarity(rows, overall), os.path.join(_OUT.value, "grad_similarity.png"))
    print(report.table(overall, ["pair", "timesteps", "seeds", "mean", "min", "max"]))
    print(f"wrote {_OUT.value}/grad_similarity.csv, grad_similarity.png")


if __name__ == "__main__":
    cli.run(main)
