"""Every training method on one config, side by side: the paper's comparison table, measured.

    python -m experiments.compare --config configs/digits.py --methods all --seeds 0,1,2 --out DIR \
        [--sltt_k 1] [--config.FIELD=VALUE ...]

Trains each method on each seed with experiments.train's train_and_evaluate
(in DIR/runs/METHOD_seedN). Rerunning the same command resumes unfinished runs
and reuses finished ones; a rerun with changed flags stops with one line naming
the fields before anything is trained (every run's record is checked first). Then it
measures one training step of each method at the config's batch size and T on
one device: the median wall time of the jitted step and XLA's compiled memory
of it (analysis.step_cost). Writes
  DIR/compare_runs.csv  one row per run: method, seed, test_accuracy, best_test_accuracy, train_time_s
  DIR/compare.csv       one row per method: the means and standard deviations over seeds,
                        step_time_s, compiled_temp_bytes
  DIR/compare.md        that table in Markdown (also printed)
  DIR/compare.png       final test accuracy against step time and against compiled memory
Every method runs the config's recipe; sltt_k backpropagates --sltt_k of the T steps.
"""

from __future__ import annotations

import os
import statistics

from absl import flags
from ml_collections import config_flags

from experiments import cli, common, report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/NAME.py[:smoke]).")
_METHODS = flags.DEFINE_list("methods", ["all"], "Methods (ratebp_jax.METHODS), or 'all'.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed) to train each method with.")
_SLTT_K = flags.DEFINE_integer("sltt_k", 1, "K of sltt_k, unless the config sets sltt_k.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls of the step (median reported).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
flags.mark_flags_as_required(["config", "out"])

RUN_COLUMNS = ["method", "seed", "test_accuracy", "best_test_accuracy", "train_time_s"]
COLUMNS = ["method", "seeds", "test_accuracy", "test_accuracy_std", "best_test_accuracy", "best_test_accuracy_std",
           "train_time_s", "step_time_s", "compiled_temp_bytes"]


def summarize(runs: list[dict], costs: dict[str, object]) -> list[dict]:
    """One row per method (in the order of runs): mean and std over seeds, and the step's cost."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        own = [r for r in runs if r["method"] == method]
        row = {"method": method, "seeds": len(own)}
        for field in ("test_accuracy", "best_test_accuracy"):
            values = [r[field] for r in own]
            row[field], row[f"{field}_std"] = statistics.mean(values), statistics.pstdev(values)
        row["train_time_s"] = statistics.mean(r["train_time_s"] for r in own)
        row["step_time_s"], row["compiled_temp_bytes"] = costs[method].step_time_s, costs[method].temp_bytes
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """The comparison table with accuracies as mean ± std and memory in MiB."""
    lines = ["| method | final test accuracy (%) | best test accuracy (%) | train time (s) | step time (ms) "
             "| compiled memory (MiB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['test_accuracy']:.2f} ± {r['test_accuracy_std']:.2f} "
                     f"| {r['best_test_accuracy']:.2f} ± {r['best_test_accuracy_std']:.2f} | {r['train_time_s']:.0f} "
                     f"| {1000 * r['step_time_s']:.1f} | {r['compiled_temp_bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


def step_costs(config, methods: list[str], split) -> dict:
    """analysis.StepCost of one step of each method at the config's batch size, on one device."""
    import jax
    import jax.numpy as jnp

    from ratebp_jax import analysis, train

    model = train.create_model(config, split.num_classes, split.input_shape[-1], axis_name=None)
    shape = (config.batch_size,) + tuple(split.input_shape)
    images = jax.random.normal(jax.random.key(1), shape, jnp.dtype(config.dtype))
    labels = jax.random.randint(jax.random.key(2), (config.batch_size,), 0, split.num_classes)
    variables = train.create_train_state(config, model, images, 1)
    variables = {"params": variables.params, "batch_stats": variables.batch_stats}
    costs = {}
    for method in methods:
        costs[method] = analysis.step_cost(model, method, variables, images, labels, timesteps=config.timesteps,
                                           repeats=_REPEATS.value, k=config.sltt_k)
        print(f"{method}: step {costs[method].step_time_s * 1000:.1f} ms, "
              f"{costs[method].temp_bytes / 2**20:.1f} MiB compiled temporaries", flush=True)
    return costs


def main(argv):
    common.start(argv)
    from ratebp_jax import configuration, data, plotting, runs, train

    names = common.method_names(_METHODS.value)
    seeds = [int(s) for s in _SEEDS.value]
    base = _CONFIG.value
    if base.get("sltt_k") is None:
        base.sltt_k = _SLTT_K.value
    configs = []
    for method in names:
        for seed in seeds:
            config = base.copy_and_resolve_references()
            config.method, config.seed = method, seed
            workdir = os.path.join(_OUT.value, "runs", f"{config.method}_seed{config.seed}")
            try:
                train.check_run(config, workdir)  # all of them before any training
            except (configuration.ConfigError, runs.RunError) as error:
                cli.fail(error)
            configs.append((config, workdir))

    results = []
    for i, (config, workdir) in enumerate(configs, 1):
        print(f"=== run {i}/{len(configs)}: {config.method}, seed {config.seed}", flush=True)
        try:
            result = train.train_and_evaluate(config, workdir)
        except (configuration.ConfigError, runs.RunError, data.DataNotFoundError) as error:
            cli.fail(error)
        results.append({"method": config.method, "seed": config.seed, **result})
    report.write_csv(os.path.join(_OUT.value, "compare_runs.csv"), results, RUN_COLUMNS)

    print("=== step time and compiled memory, one device", flush=True)
    split = data.make_split(base.dataset, train=False, batch_size=base.eval_batch_size, data_dir=base.data_dir or None)
    rows = summarize(results, step_costs(base, names, split))
    report.write_csv(os.path.join(_OUT.value, "compare.csv"), rows, COLUMNS)
    table = markdown(rows)
    kwargs = configuration.model_kwargs(base)
    model = base.model + (f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")
    with open(os.path.join(_OUT.value, "compare.md"), "w") as f:
        f.write(f"{model} on {base.dataset}, T = {base.timesteps}, batch {base.batch_size}, "
                f"{len(seeds)} seeds, {report.device_name()}\n\n{table}\n")
    title = f"{model} on {base.dataset}, T = {base.timesteps}, {report.device_name()}"
    plotting.save(plotting.plot_comparison(rows, title), os.path.join(_OUT.value, "compare.png"))
    print(table)
    print(f"wrote {_OUT.value}/compare_runs.csv, compare.csv, compare.md, compare.png")


if __name__ == "__main__":
    cli.run(main)
