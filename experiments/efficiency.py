"""Time and memory of one training step against T, per method (the paper's Fig. 4).

    python -m experiments.efficiency --model resnet18 --batch_size 16 \
        --timesteps 1,2,4,6,8 --methods all --out DIR
    python -m experiments.efficiency --model_module my_models --model my_cnn \
        --model_kwargs '{"width": 32}' ...      (a registered model of one's own)

For each method and T: the median wall time of the jitted step (forward and
backward, after a warm-up call), XLA's compiled memory of the step
(memory_analysis: temporaries, arguments, outputs) and, with --isolate on a
GPU/TPU, the allocator's peak in a fresh process per measurement. A row
"forward" at T = 1 is one no-grad forward time step (F of SPEC §4).
Inputs are random uniform images at the model's size (--image_size to change)
and the parameters are those at initialisation: the cost does not depend on them.

Writes DIR/efficiency.csv, DIR/efficiency.png (time and memory vs T, one line
per method) and DIR/efficiency_summary.json (the ratios below), and prints the
table and:
  time_ratio_T6        rate_m / bptt_m step time at T = 6
  memory_ratio_T6      rate_m / bptt_m compiled temporaries at T = 6
  rate_s_memory_T8_T1  rate_s compiled temporaries at T = 8 / at T = 1
  rate_m_vs_cost_model rate_m step time at T = 6 / (6 F + rate_m step time at T = 1)
and the baselines' (SPEC §4):
  bptt_s_vs_bptt_m_time_max  the largest bptt_s / bptt_m step time over the T measured
  sltt_memory_T8_T2          sltt compiled temporaries at T = 8 / at T = 2 (ottt_...: ottt's)
  sltt_k_vs_sltt_time_T6     sltt_k / sltt step time at T = 6
A step slower than --max_step_s is not timed at larger T (its memory still is:
compiling is cheap), so a slow method on a CPU does not take hours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import flags

from experiments import cli, common, report

_MODEL = flags.DEFINE_string("model", "resnet18", "A name of ratebp_jax.models.names() (with --model_module).")
_MODEL_MODULE = flags.DEFINE_string("model_module", "", "A module to import first, which registers --model "
                                    "(ratebp_jax.models.register), as config.model_module.")
_MODEL_KWARGS = flags.DEFINE_string("model_kwargs", "{}", "JSON dict of keyword arguments of the model's builder, "
                                    "as config.model_kwargs.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size of the step.")
_TIMESTEPS = flags.DEFINE_list("timesteps", ["1", "2", "4", "6", "8"], "Values of T.")
_METHODS = flags.DEFINE_list("methods", ["bptt_m", "bptt_s", "rate_m", "rate_s"],
                             "Training methods (ratebp_jax.METHODS), or 'all'.")
_SLTT_K = flags.DEFINE_integer("sltt_k", 1, "K of sltt_k (at most T).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Input height = width (0: the model's own size).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median reported).")
_MAX_STEP_S = flags.DEFINE_float("max_step_s", 60.0, "Do not time a method at larger T once its step takes longer.")
_ISOLATE = flags.DEFINE_bool("isolate", False, "Measure each (method, T) in a fresh process, so that peak_bytes "
                             "(GPU/TPU) is that step's own peak; without it peak_bytes is left empty.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_ONE = flags.DEFINE_string("one", None, "(internal, for --isolate) METHOD:T:RUN: print one row as JSON.")

COLUMNS = ["model", "method", "timesteps", "batch_size", "device", "step_time_s", "compiled_temp_bytes",
           "argument_bytes", "output_bytes", "peak_bytes"]


def measure_here():
    """analysis.measure_in_process of the flags' model and batch."""
    from ratebp_jax import analysis

    setup = common.random_init(_MODEL.value, batch_size=_BATCH.value, image_size=_IMAGE_SIZE.value,
                               dtype=_DTYPE.value, model_module=_MODEL_MODULE.value,
                               model_kwargs=json.loads(_MODEL_KWARGS.value))
    return analysis.measure_in_process(*setup, repeats=_REPEATS.value, k=_SLTT_K.value)


def measure_isolated(method: str, timesteps: int, run: bool):
    """(analysis.StepCost, device name) of one measurement in a fresh Python process, which has
    the accelerator to itself (the allocator's peak is then this step's own)."""
    from ratebp_jax import analysis

    flag_names = ("model", "model_module", "model_kwargs", "batch_size", "image_size", "dtype", "repeats", "sltt_k")
    argv = [flags.FLAGS[name].serialize() for name in flag_names]
    proc = subprocess.run([sys.executable, "-m", "experiments.efficiency", *argv,
                           f"--one={method}:{timesteps}:{int(run)}"], capture_output=True, text=True, check=True)
    fields = json.loads(proc.stdout.strip().splitlines()[-1])
    device = fields.pop("device")
    return analysis.StepCost(**fields), device


def summarize(rows: list[dict]) -> dict:
    """The ratios of the module docstring (None where a needed row is missing or untimed)."""
    def get(method, t, field):
        found = [r[field] for r in rows if r["method"] == method and int(r["timesteps"]) == t]
        return float(found[0]) if found and found[0] not in (None, "") else None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    fwd, rate_1 = get("forward", 1, "step_time_s"), get("rate_m", 1, "step_time_s")
    model_cost = None if fwd is None or rate_1 is None else 6 * fwd + rate_1
    bptt_s_ratios = [r for r in (ratio(get("bptt_s", int(t), "step_time_s"), get("bptt_m", int(t), "step_time_s"))
                                 for t in {row["timesteps"] for row in rows}) if r is not None]
    return {
        "time_ratio_T6": ratio(get("rate_m", 6, "step_time_s"), get("bptt_m", 6, "step_time_s")),
        "memory_ratio_T6": ratio(get("rate_m", 6, "compiled_temp_bytes"), get("bptt_m", 6, "compiled_temp_bytes")),
        "rate_s_memory_T8_T1": ratio(get("rate_s", 8, "compiled_temp_bytes"), get("rate_s", 1, "compiled_temp_bytes")),
        "rate_m_vs_cost_model": ratio(get("rate_m", 6, "step_time_s"), model_cost),
        "bptt_s_vs_bptt_m_time_max": max(bptt_s_ratios, default=None),
        "sltt_memory_T8_T2": ratio(get("sltt", 8, "compiled_temp_bytes"), get("sltt", 2, "compiled_temp_bytes")),
        "ottt_memory_T8_T2": ratio(get("ottt", 8, "compiled_temp_bytes"), get("ottt", 2, "compiled_temp_bytes")),
        "sltt_k_vs_sltt_time_T6": ratio(get("sltt_k", 6, "step_time_s"), get("sltt", 6, "step_time_s")),
    }


def main(argv):
    common.start(argv)
    from ratebp_jax import analysis, plotting

    if _ONE.value:
        method, timesteps, run = _ONE.value.split(":")
        cost = measure_here()(method, int(timesteps), run == "1")
        print(json.dumps({**cost._asdict(), "device": report.device_name()}))
        return
    if not _OUT.value:
        cli.fail("--out is required (see --help)")
    method_names = common.method_names(_METHODS.value)
    timesteps = [int(t) for t in _TIMESTEPS.value]
    if not timesteps or min(timesteps) < 1:
        cli.fail(f"--timesteps must be integers >= 1, got {_TIMESTEPS.value}")

    device = {}
    if _ISOLATE.value:  # this process never touches the accelerator: each measuring process has it alone

        def measure_one(method, t, run):
            cost, device["name"] = measure_isolated(method, t, run)
            return cost
    else:
        measure_one = measure_here()
        device["name"] = report.device_name()

    def measure(method, t, run):
        cost = measure_one(method, t, run)
        timed = "not timed" if cost.step_time_s is None else f"{cost.step_time_s:.4g} s"
        print(f"{method} T={t}: {timed}, {cost.temp_bytes / 2**20:.1f} MiB compiled temporaries", flush=True)
        return cost

    rows = analysis.cost_sweep(measure, timesteps=timesteps, methods=method_names, max_step_s=_MAX_STEP_S.value)
    setting = {"model": _MODEL.value, "batch_size": _BATCH.value, "device": device["name"]}
    rows = [{**setting, **row, "peak_bytes": row["peak_bytes"] if _ISOLATE.value else None} for row in rows]
    os.makedirs(_OUT.value, exist_ok=True)
    report.write_csv(os.path.join(_OUT.value, "efficiency.csv"), rows, COLUMNS)
    plotting.save(plotting.plot_cost(rows, f"{_MODEL.value}, batch {_BATCH.value}, {setting['device']}"),
                  os.path.join(_OUT.value, "efficiency.png"))
    summary = summarize(rows)
    with open(os.path.join(_OUT.value, "efficiency_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(report.table(rows, COLUMNS))
    width = max(map(len, summary)) + 2
    for name, value in summary.items():
        print(f"{name:{width}s}{'-' if value is None else f'{value:.3f}'}")
    print(f"wrote {_OUT.value}/efficiency.csv, efficiency.png, efficiency_summary.json")


if __name__ == "__main__":
    cli.run(main)
