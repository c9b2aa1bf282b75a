"""The time and memory one training step costs, per method and T.

    cost = step_cost(model, "rate_m", variables, images, labels, timesteps=4)
    rows = cost_sweep(measure_in_process(model, variables, images, labels),
                      timesteps=[1, 2, 4], methods=["bptt_m", "rate_m"])

cost_sweep takes any measure(method, T, run) -> StepCost: measure_in_process
measures in this process; experiments.efficiency --isolate measures each
(method, T) in a fresh one.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax

from ratebp_jax import inputs
from ratebp_jax.analysis.common import inference_variables, measured_step


class StepCost(NamedTuple):
    step_time_s: float | None    # median wall time of one compiled call (None: not run)
    temp_bytes: int              # XLA memory_analysis of the compiled step: temporaries,
    argument_bytes: int          # arguments
    output_bytes: int            # and outputs
    peak_bytes: int | None       # device allocator peak in this process (GPU/TPU; None on CPU)


Measure = Callable[[str, int, bool], StepCost]  # (method or "forward", T, run) -> its cost


def median_time(fn, *args, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time (s) of fn(*args) with the result ready, after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return None if stats is None else stats.get("peak_bytes_in_use")


def _cost(compiled, args, *, run: bool, repeats: int) -> StepCost:
    memory = compiled.memory_analysis()
    step_time = median_time(compiled, *args, repeats=repeats) if run else None
    return StepCost(step_time, int(memory.temp_size_in_bytes), int(memory.argument_size_in_bytes),
                    int(memory.output_size_in_bytes), _peak_bytes() if run else None)


def step_cost(model: nn.Module, method: str, variables: dict, images: jax.Array, labels: jax.Array, *,
              timesteps: int, run: bool = True, repeats: int = 3, k: int | None = None) -> StepCost:
    """Time and memory of one jitted training step of ``method`` (forward and backward).

    images: [B, H, W, C] or [B, T, H, W, C]; labels: int [B]. run=False only
    compiles (memory without the wait); then the arguments may be
    jax.ShapeDtypeStruct. The step time is the median of ``repeats`` calls
    after one warm-up call. k: sltt_k's K (min(k, T) is used).
    """
    step = jax.jit(lambda v, x, y: measured_step(method, model, v, x, y, timesteps=timesteps, k=k))
    compiled = step.lower(variables, images, labels).compile()
    return _cost(compiled, (variables, images, labels), run=run, repeats=repeats)


def forward_step_cost(model: nn.Module, variables: dict, images: jax.Array, *, run: bool = True,
                      repeats: int = 3) -> StepCost:
    """Cost of one no-grad forward time step (eval mode, T = 1): F of SPEC §4."""
    forward = jax.jit(lambda v, x: model.apply(v, inputs.time_major(x, 1), mode="eval"))
    variables = inference_variables(variables)
    compiled = forward.lower(variables, inputs.first_step(images)).compile()
    return _cost(compiled, (variables, inputs.first_step(images)), run=run, repeats=repeats)


def _measure(model, variables, images, labels, method: str, timesteps: int, run: bool, *, repeats: int,
             k: int | None) -> StepCost:
    if method == "forward":
        return forward_step_cost(model, variables, images, run=run, repeats=repeats)
    return step_cost(model, method, variables, images, labels, timesteps=timesteps, run=run, repeats=repeats, k=k)


def measure_in_process(model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *,
                       repeats: int = 3, k: int | None = None) -> Measure:
    """measure(method, T, run) -> StepCost in this process: step_cost of the method on this batch, or
    forward_step_cost for method "forward" (then T is 1). k: sltt_k's K (min(k, T) at each T)."""
    return functools.partial(_measure, model, variables, images, labels, repeats=repeats, k=k)


def cost_sweep(measure: Measure, *, timesteps: Sequence[int], methods: Sequence[str],
               max_step_s: float = math.inf) -> list[dict]:
    """Cost of each method at each T, plus one no-grad forward step (method "forward", T = 1).

    measure(method, T, run) -> StepCost: e.g. measure_in_process(...); run
    False asks for the memory only. A method whose step takes longer than
    max_step_s is not timed at larger T (its memory still is: compiling is
    cheap). Returns rows {"method", "timesteps", "step_time_s",
    "compiled_temp_bytes", "argument_bytes", "output_bytes", "peak_bytes"} in
    measurement order.
    """
    rows = []

    def add(method: str, t: int, run: bool) -> StepCost:
        cost = measure(method, t, run)
        rows.append({"method": method, "timesteps": t, "step_time_s": cost.step_time_s,
                     "compiled_temp_bytes": cost.temp_bytes, "argument_bytes": cost.argument_bytes,
                     "output_bytes": cost.output_bytes, "peak_bytes": cost.peak_bytes})
        return cost

    add("forward", 1, True)
    for method in methods:
        run = True
        for t in sorted(timesteps):
            cost = add(method, t, run)
            run = run and cost.step_time_s <= max_step_s
    return rows
