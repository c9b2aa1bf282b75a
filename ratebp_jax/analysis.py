"""Measurements of an SNN and its training methods: gradient similarity, firing
rates, operation counts and energy at inference, and the time and memory one
training step costs.

    cosines = grad_similarity(model, variables, images, labels, timesteps=4,
                              pairs=[("rate_m", "bptt_m")])
    # {("rate_m", "bptt_m"): {"overall": 0.8, "conv0": 0.2, ..., "classifier": 1.0}} (weight gradients)
    rates = firing_rates(model, variables, images, timesteps=4)   # {"lif1": [T], ...}
    ops = operation_counts(model, variables, images, timesteps=4)
    # [{"layer": "conv0", "input_rate", "acs", "macs", "ann_macs", "energy_pj", "ann_energy_pj"}, ...]
    cost = step_cost(model, "rate_m", variables, images, labels, timesteps=4)

Layers are named by their module path ("layer1_0/conv1") and listed in network
order: the order in which a forward pass calls them, not the alphabetical
order of the parameter tree. images are [B, H, W, C] or [B, T, H, W, C], as
everywhere (ratebp_jax.inputs).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ratebp_jax import inputs, opcount
from ratebp_jax import methods as methods_lib
from ratebp_jax.layers import LIF


def call_order(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int,
               kinds: tuple[type, ...]) -> list[str]:
    """Paths ("a/b") of the submodules of the given kinds, in the order the forward pass calls them.

    Traced abstractly (jax.eval_shape): nothing is computed.
    """
    order = []

    def record(next_fun, args, kwargs, context):
        path = "/".join(context.module.path)
        if context.method_name == "__call__" and isinstance(context.module, kinds) and path not in order:
            order.append(path)
        return next_fun(*args, **kwargs)

    x = inputs.time_major(images, timesteps)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, mode="eval"), variables, x)
    return order


def subtree(tree: dict, path: str) -> Any:
    """tree["a"]["b"] for path "a/b"."""
    return functools.reduce(lambda node, key: node[key], path.split("/"), tree)


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two pytrees of one structure, as flat vectors (computed in float64)."""
    a = np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(b)])
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


SLTT_K_KEY = 0  # the key sltt_k's steps are drawn from in these measurements (the K drawn steps vary per seed)


def method_options(method: str, k: int | None, timesteps: int) -> dict:
    """step_output's rng (key SLTT_K_KEY) and k (at most T) for sltt_k; none for the other methods."""
    if method != "sltt_k":
        return {}
    return dict(rng=jax.random.key(SLTT_K_KEY), k=None if k is None else min(k, timesteps))


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("timesteps", "k"))
def _grads(method: str, model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *,
           timesteps: int, k: int | None = None) -> Any:
    return methods_lib.step_output(method, model, variables, images, labels, timesteps=timesteps,
                                  **method_options(method, k, timesteps)).grads


def grad_similarity(model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *, timesteps: int,
                    pairs: Sequence[tuple[str, str]] = (("rate_m", "bptt_m"), ("rate_s", "bptt_s")),
                    k: int | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """Cosine similarity of the weight gradients of two methods on one batch (SPEC oracle 4).

    Returns, per pair (a, b) of METHODS: {"overall": cosine over the weights
    (kernels) of all conv and linear layers as one vector, then per layer in
    network order: cosine of that layer's kernel}. Biases and BatchNorm
    parameters are left out, as in the paper's measurement. k: sltt_k's K.
    """
    layers = call_order(model, variables, images, timesteps=timesteps, kinds=(nn.Conv, nn.Dense))
    kernels = {}
    for method in {m for pair in pairs for m in pair}:
        grads = jax.device_get(_grads(method, model, variables, images, labels, timesteps=timesteps, k=k))
        kernels[method] = {layer: subtree(grads, layer)["kernel"] for layer in layers}
    result = {}
    for a, b in pairs:
        result[(a, b)] = {"overall": cosine(kernels[a], kernels[b])} | {
            layer: cosine(kernels[a][layer], kernels[b][layer]) for layer in layers}
    return result


@functools.partial(jax.jit, static_argnums=0, static_argnames=("timesteps", "mode"))
def _lif_outputs(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int, mode: str) -> dict:
    _, state = model.apply(variables, inputs.time_major(images, timesteps), mode=mode,
                           capture_intermediates=lambda module, method: isinstance(module, LIF),
                           mutable=True)
    # Per LIF layer: spikes [T, B, ...] -> the fraction of its neurons that fire at each t, [T].
    return jax.tree.map(lambda s: s.reshape(s.shape[0], -1).mean(axis=1), state["intermediates"])


def firing_rates(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int,
                 mode: str = "eval") -> dict[str, np.ndarray]:
    """Mean firing rate of each LIF layer at each time step, in network order.

    mode "eval" (running BatchNorm statistics, as at test time) or "spike"
    (batch statistics, as in training). Returns {layer path: float [T]}: the
    fraction of the layer's neurons (over the batch and all positions) that
    spike at step t. Average over t for the layer's mean rate.
    """
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    outputs = _lif_outputs(model, variables, images, timesteps=timesteps, mode=mode)
    layers = call_order(model, variables, images, timesteps=timesteps, kinds=(LIF,))
    return {layer: np.asarray(subtree(outputs, layer)["__call__"][0]) for layer in layers}


@functools.partial(jax.jit, static_argnums=0, static_argnames="timesteps")
def _layer_operations(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int) -> dict:
    """{layer path: {"ops": int32 [T, B], "nonzero": int32 [T, B], "inputs", "ann_macs", "binary"}} of the
    eval pass: its operations, its nonzero inputs and inputs per step and example, its ANN MACs, whether
    every input is 0/1. A layer called twice is counted twice."""
    calls, calling = [], set()

    def capture(next_fun, args, kwargs, context):
        path = "/".join(context.module.path)
        if context.method_name != "__call__" or not isinstance(context.module, opcount.KINDS) or path in calling:
            return next_fun(*args, **kwargs)  # (the last case: a pass-aware layer calling its flax __call__)
        calls.append((path, context.module.clone(parent=None), args[0]))
        calling.add(path)
        try:
            return next_fun(*args, **kwargs)
        finally:
            calling.discard(path)

    with nn.intercept_methods(capture):
        model.apply(variables, inputs.time_major(images, timesteps), mode="eval")
    counts = {}
    for path, layer, x in calls:  # after the forward pass: the counting convs are not captured
        kernel_shape = subtree(variables["params"], path)["kernel"].shape
        own = {"ops": opcount.receptive_counts(layer, kernel_shape, x),
               "nonzero": (x != 0).reshape(x.shape[:2] + (-1,)).sum(axis=-1, dtype=jnp.int32),
               "inputs": jnp.int32(x[0, 0].size), "ann_macs": opcount.dense_macs(layer, kernel_shape, x),
               "binary": opcount.is_binary(x)}
        before = counts.get(path)
        counts[path] = own if before is None else {
            k: before[k] & own[k] if k == "binary" else before[k] + own[k] for k in own}
    return counts


def operation_counts(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int,
                     e_ac_pj: float = opcount.E_AC_PJ, e_mac_pj: float = opcount.E_MAC_PJ) -> list[dict]:
    """Synaptic operations and energy per image of each conv and linear layer at inference.

    The evaluation forward pass (mode "eval": running BatchNorm statistics) on
    images [B, H, W, C] or [B, T, H, W, C]. One row per layer, in network
    order, all per image (summed over the T steps and the batch, divided by B):
      layer          its parameter path, e.g. "layer1_0/conv1"
      input_rate     the fraction of its inputs (over T, the batch and positions)
                     that are nonzero: the firing rate when they are spikes
      acs, macs      the spiking network's operations: at each step, for each
                     output element, one per nonzero input in its receptive
                     field (padding is no input). ACs if every input of the
                     layer in this batch is 0 or 1 (spikes, or a binary image),
                     else MACs (and acs = 0): the encoding conv on the image (a
                     static image is fed at every step, so T times), a layer
                     after an average pool (its inputs are fractions of
                     spikes), a sum of spikes (sew_resnet34's ADD gives 2s)
      ann_macs       the same layer on a real input with no zeros, once per
                     image: the ANN of the same architecture
      energy_pj      acs · e_ac_pj + macs · e_mac_pj
      ann_energy_pj  ann_macs · e_mac_pj
    Bias additions are not counted. The defaults E_AC = 0.9 pJ (a 32-bit float
    add) and E_MAC = 4.6 pJ (a 32-bit float multiply-accumulate) at 45 nm are
    from M. Horowitz, ISSCC 2014 (ratebp_jax.opcount). Totals are sums over rows.
    """
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    counts = jax.device_get(_layer_operations(model, variables, images, timesteps=timesteps))
    batch = images.shape[0]
    rows = []
    for layer in call_order(model, variables, images, timesteps=timesteps, kinds=opcount.KINDS):
        c = counts[layer]
        ops = float(np.sum(c["ops"], dtype=np.int64)) / batch
        acs, macs = (ops, 0.0) if c["binary"] else (0.0, ops)
        ann_macs = float(c["ann_macs"])
        rows.append({"layer": layer,
                     "input_rate": float(np.sum(c["nonzero"], dtype=np.int64) / (c["nonzero"].size * c["inputs"])),
                     "acs": acs, "macs": macs, "ann_macs": ann_macs,
                     "energy_pj": opcount.energy_pj(acs, macs, e_ac_pj=e_ac_pj, e_mac_pj=e_mac_pj),
                     "ann_energy_pj": opcount.energy_pj(0.0, ann_macs, e_mac_pj=e_mac_pj)})
    return rows


class StepCost(NamedTuple):
    step_time_s: float | None    # median wall time of one compiled call (None: not run)
    temp_bytes: int              # XLA memory_analysis of the compiled step: temporaries,
    argument_bytes: int          # arguments
    output_bytes: int            # and outputs
    peak_bytes: int | None       # device allocator peak in this process (GPU/TPU; None on CPU)


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

    run=False only compiles (memory without the wait); then the arguments may be
    jax.ShapeDtypeStruct. The step time is the median of ``repeats`` calls
    after one warm-up call. k: sltt_k's K.
    """
    options = method_options(method, k, timesteps)
    step = jax.jit(lambda v, x, y: methods_lib.step_output(method, model, v, x, y, timesteps=timesteps, **options))
    compiled = step.lower(variables, images, labels).compile()
    return _cost(compiled, (variables, images, labels), run=run, repeats=repeats)


def forward_step_cost(model: nn.Module, variables: dict, images: jax.Array, *, run: bool = True,
                      repeats: int = 3) -> StepCost:
    """Cost of one no-grad forward time step (eval mode, T = 1): F of SPEC §4."""
    forward = jax.jit(lambda v, x: model.apply(v, inputs.time_major(x, 1), mode="eval"))
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    compiled = forward.lower(variables, inputs.first_step(images)).compile()
    return _cost(compiled, (variables, inputs.first_step(images)), run=run, repeats=repeats)


def measure_cost(model: nn.Module, method: str, timesteps: int, run: bool, *, variables: dict, images: jax.Array,
                 labels: jax.Array, repeats: int = 3, k: int | None = None) -> StepCost:
    """step_cost of ``method``, or forward_step_cost for method "forward" (then timesteps is 1)."""
    if method == "forward":
        return forward_step_cost(model, variables, images, run=run, repeats=repeats)
    return step_cost(model, method, variables, images, labels, timesteps=timesteps, run=run, repeats=repeats, k=k)


def cost_sweep(model: nn.Module | None = None, variables: dict | None = None, images: jax.Array | None = None,
               labels: jax.Array | None = None, *, timesteps: Sequence[int], methods: Sequence[str],
               repeats: int = 3, max_step_s: float = math.inf, k: int | None = None,
               measure: Callable[[str, int, bool], StepCost] | None = None) -> list[dict]:
    """Cost of each method at each T, plus one no-grad forward step (method "forward", T = 1).

    A method whose step takes longer than max_step_s is not timed at larger T
    (its memory still is: compiling is cheap). By default ``measure_cost`` of
    (model, variables, images, labels) in this process; measure(method, T,
    run) -> StepCost replaces it (e.g. one in a fresh process), and then the
    model arguments are not needed. k: sltt_k's K (min(k, T) at each T).
    Returns rows {"method", "timesteps", "step_time_s", "compiled_temp_bytes",
    "argument_bytes", "output_bytes", "peak_bytes"} in measurement order.
    """
    if measure is None:
        if any(arg is None for arg in (model, variables, images, labels)):
            raise ValueError("cost_sweep needs model, variables, images and labels, or a measure function")
        measure = functools.partial(measure_cost, model, variables=variables, images=images, labels=labels,
                                    repeats=repeats, k=k)
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
