"""The training methods: one function each, one signature (SPEC §2–3.4).

    bptt_m      backpropagation through time, each layer over the whole sequence
    bptt_s      backpropagation through time, the network applied once per step
    rate_m      rate-based: multi-step spike pass, then the rate pass
    rate_s      rate-based: single-step spike pass (memory flat in T), then the rate pass
    sltt        online: each step's loss, the carried membranes constant in its gradient
    sltt_k      sltt with only K of the T steps, drawn from rng, backpropagating
    ottt        online as sltt, weight gradients from presynaptic traces (OTTT_A)
    bptt_remat  bptt_m whose backward pass recomputes each block's activations from its input

Each takes (model, variables, images, labels, timesteps) with variables =
{"params", "batch_stats"} (either may be an empty dict), images [B, H, W, C] (static, repeated T times) or
[B, T, H, W, C] (a sequence), labels int [B], and returns a StepOutput;
sltt_k also takes rng (a key) and k. BatchNorm runs in training mode; nothing
here is device-specific (under pmap the model's BatchNorm averages its
statistics over its axis_name).

Time loops: the online methods and rate_s's spike pass are loops (lax.scan),
so that only one step's activations are alive at a time (memory flat in T);
unrolled, XLA:CPU's scheduler keeps several steps alive and their memory
grows with T. Their convolutions' gradients are computed in XLA:CPU's native
layouts (layers.Conv in the step modes, online.conv), which keeps them fast
inside a loop body, where autodiff's form is many times slower on XLA:CPU
(jax-ml/jax#12868). bptt_s writes its loop out (unroll=True): BPTT keeps
every step's activations anyway, and unrolled its step needs less memory.
The README has the measured figures.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import optax

from ratebp_jax import contract, inputs
from ratebp_jax.layers import MEMBRANE, RECORD, TRACE


class StepOutput(NamedTuple):
    loss: jax.Array         # scalar: cross-entropy of the time-mean logits, batch mean (online methods: their objective)
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


def bptt_m(model, variables, images, labels, timesteps, mode: str = "bptt") -> StepOutput:
    x = inputs.time_major(images, timesteps)

    def loss_fn(params):
        logits, updates = model.apply({**variables, "params": params}, x, mode=mode, mutable=["batch_stats"])
        logits = logits.mean(axis=0)
        return cross_entropy(logits, labels), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return StepOutput(loss, logits, grads, batch_stats)


def bptt_remat(model, variables, images, labels, timesteps) -> StepOutput:
    # bptt_m, in which each marked block of the model (layers.remat, Layers.block) keeps only its
    # input and variables for the backward pass and recomputes its activations there
    return bptt_m(model, variables, images, labels, timesteps, mode="bptt_remat")


def bptt_s(model, variables, images, labels, timesteps) -> StepOutput:
    membrane = _zero_state(model, variables, inputs.first_step(images), "bptt_step", [MEMBRANE])

    def loss_fn(params):
        def step(state, x_t):
            logits_t, state = model.apply({"params": params, **state}, x_t, mode="bptt_step",
                                          mutable=["batch_stats", MEMBRANE])
            return state, logits_t

        state = {"batch_stats": variables["batch_stats"], **membrane}
        # unrolled (module docstring); BPTT keeps every step's activations anyway
        state, logits = inputs.scan_over_time(step, state, images, timesteps, unroll=True)
        logits = logits.mean(axis=0)
        return cross_entropy(logits, labels), (logits, state["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return StepOutput(loss, logits, grads, batch_stats)


def sltt(model, variables, images, labels, timesteps) -> StepOutput:
    return _online(model, variables, images, labels, timesteps, mode="bptt_step")


def sltt_k(model, variables, images, labels, timesteps, *, rng: jax.Array, k: int) -> StepOutput:
    """sltt in which only K steps, drawn uniformly without replacement from rng, backpropagate.

    The objective is (1/K) Σ_{t∈S} CE(o_t, y) over the drawn steps S: an
    unbiased estimate of sltt's gradient (its 1/T mean over all steps), equal
    to it when K = T. The other steps run forward only.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= timesteps:
        raise ValueError(f"k must be an integer with 1 <= k <= timesteps ({timesteps}), got {k!r}")
    drawn = jax.random.choice(rng, timesteps, (k,), replace=False)
    learns = jnp.zeros(timesteps, bool).at[drawn].set(True)
    return _online(model, variables, images, labels, timesteps, mode="bptt_step", learns=learns, num_learning=k)


def ottt(model, variables, images, labels, timesteps) -> StepOutput:
    return _online(model, variables, images, labels, timesteps, mode="ottt_step")


def _online(model, variables, images, labels, timesteps, *, mode: str, learns: jax.Array | None = None,
            num_learning: int | None = None) -> StepOutput:
    """The online methods (SPEC §3.4): the network applied once per step (``mode``, a step
    mode of layers), and at each step t the gradient of CE(o_t, y) / n with the state
    carried from t − 1 (membranes, traces) a constant, summed over t.

    learns: bool [T], the steps that backpropagate (None: all); n: their number.
    The other steps run forward only. Returns the objective Σ_t CE(o_t, y) / n
    over the learning steps as the loss and the time-mean logits.
    """
    carried = [MEMBRANE, TRACE] if mode == "ottt_step" else [MEMBRANE]
    params, num_learning = variables["params"], num_learning or timesteps

    def step_loss(params, state, x_t):
        logits_t, state = model.apply({"params": params, **state}, x_t, mode=mode, mutable=["batch_stats", *carried])
        return cross_entropy(logits_t, labels) / num_learning, (logits_t, state)

    def learn(state, x_t):
        (loss_t, (logits_t, state)), grads_t = jax.value_and_grad(step_loss, has_aux=True)(params, state, x_t)
        return loss_t, logits_t, state, grads_t

    def forward_only(state, x_t):
        loss_t, (logits_t, state) = step_loss(params, state, x_t)
        return loss_t, logits_t, state, jax.tree.map(jnp.zeros_like, params)

    def step(carry, x_t):
        t, state, grads = carry
        learns_t = True if learns is None else learns[t]
        branch = learn if learns is None else functools.partial(jax.lax.cond, learns_t, learn, forward_only)
        loss_t, logits_t, state, grads_t = branch(state, x_t)
        return (t + 1, state, jax.tree.map(jnp.add, grads, grads_t)), (jnp.where(learns_t, loss_t, 0), logits_t)

    zeros = _zero_state(model, variables, inputs.first_step(images), mode, carried)
    carry = (jnp.int32(0), {"batch_stats": variables["batch_stats"], **zeros}, jax.tree.map(jnp.zeros_like, params))
    # a loop: only one step's activations are alive at a time (memory flat in T)
    (_, state, grads), (losses, logits) = inputs.scan_over_time(step, carry, images, timesteps)
    return StepOutput(losses.sum(), logits.mean(axis=0), grads, state["batch_stats"])


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


METHOD_FNS = {"bptt_m": bptt_m, "bptt_s": bptt_s, "rate_m": rate_m, "rate_s": rate_s, "sltt": sltt,
              "sltt_k": sltt_k, "ottt": ottt, "bptt_remat": bptt_remat}
METHODS = tuple(METHOD_FNS)


def check_method(method: str) -> None:
    if method not in METHOD_FNS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def check_labels(labels: jax.Array, images: jax.Array) -> None:
    """Raises ValueError naming ``labels`` unless they are integer [B], B = images.shape[0].

    Labels >= the number of classes cannot be checked here (their values are
    traced under jit): they give a NaN loss.
    """
    shape, dtype = jnp.shape(labels), jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer) or shape != images.shape[:1]:
        raise ValueError(f"labels must be integer class indices of shape [B] = {images.shape[:1]} (the images' "
                         f"batch), got shape {shape} and dtype {dtype}")


def step_output(method: str, model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *,
                timesteps: int, rng: jax.Array | None = None, k: int | None = None) -> StepOutput:
    """The StepOutput of one training step's forward and backward passes (compute_grads's
    arguments; the training loop also needs the logits).

    rng and k: the key and K of sltt_k (both required there, ignored by the
    other methods). Shapes and dtypes are checked here; label values are not
    (see check_labels). So is the model, in an abstract trace: a layer the
    method cannot run raises contract.ModelError naming its path.
    """
    check_method(method)
    inputs.check_inputs(images, timesteps)
    check_labels(labels, images)
    variables = contract.as_variables(variables)
    contract.check_model(model, variables, images, method, timesteps)  # before compiling: one line naming the layer
    if method != "sltt_k":
        return METHOD_FNS[method](model, variables, images, labels, timesteps)
    if rng is None or k is None:
        raise ValueError(f"method sltt_k needs rng (a key) and k (1 <= k <= timesteps), got rng={rng!r}, k={k!r}")
    return sltt_k(model, variables, images, labels, timesteps, rng=rng, k=k)


def compute_grads(method: str, model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *,
                  timesteps: int, rng: jax.Array | None = None, k: int | None = None) -> tuple[jax.Array, Any, Any]:
    """(loss, grads, new_batch_stats) of one step of ``method`` (one of METHODS).

    images: [B, H, W, C] (repeated T times) or [B, T, H, W, C] with T ==
    timesteps; labels: int [B] (values below the number of classes: a larger
    one gives a NaN loss, which cannot be checked under jit); rng and k: only
    for sltt_k (a key, and 1 <= k <= timesteps). grads has the structure of
    variables["params"].
    """
    out = step_output(method, model, variables, images, labels, timesteps=timesteps, rng=rng, k=k)
    return out.loss, out.grads, out.batch_stats


def evaluate(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int) -> jax.Array:
    """Time-mean logits [B, classes] of the multi-step forward with running statistics (SPEC §3.3)."""
    inputs.check_inputs(images, timesteps)
    variables = contract.as_variables(variables)
    return model.apply(variables, inputs.time_major(images, timesteps), mode="eval").mean(axis=0)
