"""The training methods: one function each, one signature (SPEC §2–3).

    bptt_m  backpropagation through time, each layer over the whole sequence
    bptt_s  backpropagation through time, the network applied once per step
    rate_m  rate-based: multi-step spike pass, then the rate pass
    rate_s  rate-based: single-step spike pass (memory flat in T), then the rate pass

Each takes (model, variables, images, labels, timesteps) with variables =
{"params", "batch_stats"}, images [B, H, W, C] (static, repeated T times) or
[B, T, H, W, C] (a sequence), labels int [B], and returns a StepOutput.
BatchNorm runs in training mode; nothing here is device-specific (under pmap
the model's BatchNorm averages its statistics over its axis_name).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import optax

from ratebp_jax import inputs
from ratebp_jax.layers import MEMBRANE, RECORD


class StepOutput(NamedTuple):
    loss: jax.Array         # scalar: cross-entropy of the time-mean logits, batch mean
    logits: jax.Array       # [B, classes]: time-mean logits (rate methods: rate-pass logits)
    grads: Any              # like variables["params"]
    batch_stats: Any        # updated running statistics


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy, computed in at least float32; logits [B, K], labels [B]."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _zero_state(model: nn.Module, variables: dict, x_t: jax.Array, mode: str, collections: list[str]) -> dict:
    """Zeros shaped like the per-step collections (membranes, record sums) of one step."""
    mutable = ["batch_stats", *collections]
    _, shapes = jax.eval_shape(lambda: model.apply(variables, x_t, mode=mode, mutable=mutable))
    return {c: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[c]) for c in collections}


def bptt_m(model, variables, images, labels, timesteps) -> StepOutput:
    x = inputs.time_major(images, timesteps)

    def loss_fn(params):
        logits, updates = model.apply({**variables, "params": params}, x, mode="bptt", mutable=["batch_stats"])
        logits = logits.mean(axis=0)
        return cross_entropy(logits, labels), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return StepOutput(loss, logits, grads, batch_stats)


def bptt_s(model, variables, images, labels, timesteps) -> StepOutput:
    membrane = _zero_state(model, variables, inputs.first_step(images), "bptt_step", [MEMBRANE])

    def loss_fn(params):
        def step(state, x_t):
            logits_t, state = model.apply({"params": params, **state}, x_t, mode="bptt_step",
                                          mutable=["batch_stats", MEMBRANE])
            return state, logits_t

        state = {"batch_stats": variables["batch_stats"], **membrane}
        state, logits = inputs.scan_over_time(step, state, images, timesteps)
        logits = logits.mean(axis=0)
        return cross_entropy(logits, labels), (logits, state["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return StepOutput(loss, logits, grads, batch_stats)


def rate_m(model, variables, images, labels, timesteps) -> StepOutput:
    _, spike_pass = model.apply(variables, inputs.time_major(images, timesteps), mode="spike",
                                mutable=["batch_stats", RECORD])
    return _rate_pass(model, variables["params"], spike_pass["batch_stats"], spike_pass[RECORD],
                      inputs.time_mean(images), labels, timesteps)


def rate_s(model, variables, images, labels, timesteps) -> StepOutput:
    zeros = _zero_state(model, variables, inputs.first_step(images), "spike_step", [RECORD, MEMBRANE])
    float_zeros = zeros[RECORD]
    zeros[RECORD] = _as_spike_counts(float_zeros, timesteps)

    def step(state, x_t):
        _, state = model.apply({"params": variables["params"], **state}, x_t, mode="spike_step",
                               mutable=["batch_stats", RECORD, MEMBRANE])
        return state, None

    state, _ = inputs.scan_over_time(step, {"batch_stats": variables["batch_stats"], **zeros}, images, timesteps)
    # sums over t -> time-means, in the dtypes of the model
    record = jax.tree.map(lambda total, like: total.astype(like.dtype) / timesteps, state[RECORD], float_zeros)
    return _rate_pass(model, variables["params"], state["batch_stats"], record, inputs.time_mean(images), labels,
                      timesteps)


def _as_spike_counts(record_sums: dict, timesteps: int) -> dict:
    """The LIF spike sums of record_sums as uint8 counts where 1 < T < 256 (exact, a quarter of
    float32's memory); other sums unchanged. At T = 1 they stay floats: the rate is then the
    spike itself and XLA computes the spike pass and the rate pass as one network pass."""
    if not 1 < timesteps < 256:
        return record_sums
    return traverse_util.path_aware_map(  # "rate": the spike sum of layers.LIF in "spike_step" mode
        lambda path, total: total.astype(jnp.uint8) if path[-1] == "rate" else total, record_sums)


def _rate_pass(model, params, batch_stats, record, x_mean, labels, timesteps) -> StepOutput:
    """Gradients from one pass of the time-mean input x_mean [B, H, W, C] (SPEC §3.2).

    As in the reference, the gradient is that of loss / T while the reported
    loss is unchanged.
    """
    def loss_fn(params):
        logits = model.apply({"params": params, "batch_stats": batch_stats, RECORD: record}, x_mean, mode="rate")
        loss = cross_entropy(logits, labels)
        return loss / timesteps, (loss, logits)

    (_, (loss, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return StepOutput(loss, logits, grads, batch_stats)


METHOD_FNS = {"bptt_m": bptt_m, "bptt_s": bptt_s, "rate_m": rate_m, "rate_s": rate_s}
METHODS = tuple(METHOD_FNS)


def check_method(method: str) -> None:
    if method not in METHOD_FNS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def run_method(method: str, model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *,
               timesteps: int) -> StepOutput:
    """The StepOutput of one training step's forward and backward passes."""
    check_method(method)
    inputs.check_inputs(images, timesteps)
    return METHOD_FNS[method](model, variables, images, labels, timesteps)


def compute_grads(method: str, model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *,
                  timesteps: int) -> tuple[jax.Array, Any, Any]:
    """(loss, grads, new_batch_stats) of one step of ``method`` (one of METHODS).

    images: [B, H, W, C] (repeated T times) or [B, T, H, W, C] with T ==
    timesteps; labels: int [B]; grads has the structure of variables["params"].
    """
    out = run_method(method, model, variables, images, labels, timesteps=timesteps)
    return out.loss, out.grads, out.batch_stats


def evaluate(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int) -> jax.Array:
    """Time-mean logits [B, classes] of the multi-step forward with running statistics (SPEC §3.3)."""
    inputs.check_inputs(images, timesteps)
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    return model.apply(variables, inputs.time_major(images, timesteps), mode="eval").mean(axis=0)
