"""LIF, BatchNorm, Conv and Dense modules that know which pass they are in.

A model is written once and called with a ``mode``:

  multi-step, on time-major tensors [T, B, ...]:
    "bptt"   surrogate-gradient LIF scan; BatchNorm on the statistics over T·B
    "bptt_remat"  as "bptt"; the model's marked blocks (remat(Block), or
             models.common.Layers.block) recompute their activations in the
             backward pass instead of storing them
    "spike"  the rate method's spike pass: as "bptt", and every layer records
             what the rate pass needs in the collection RECORD
    "eval"   LIF scan; BatchNorm on its running statistics
  one time step, on tensors [B, ...], the membrane carried in MEMBRANE:
    "bptt_step"   one LIF step; BatchNorm on the statistics over B
    "spike_step"  as "bptt_step", and every layer adds its step's share to
                  RECORD (sums over t, in the dtypes the caller starts them
                  with, e.g. integer spike counts; the caller divides them by T)
    "ottt_step"   as "bptt_step", and every Conv/Dense fed by spikes keeps the
                  presynaptic trace of its input in TRACE (â_t = λ â_{t-1} + x_t)
                  and takes its weight gradient from it (OTTT, SPEC §3.4)
  no time axis, on the time-mean input [B, ...]:
    "rate"   LIF outputs the recorded rate with derivative elig; BatchNorm
             normalises with the recorded statistics (SPEC §3.2)

Running BatchNorm statistics are updated by every mode with batch statistics
("bptt", "spike" and the step modes), never by "rate" or "eval". Conv and
Dense take flax's arguments and compute flax's values and gradients in every
mode; Conv writes its own gradients in "bptt_step" and "ottt_step"
(online.conv), and "ottt_step" takes weight gradients at the trace.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
from flax.linen.linear import canonicalize_padding
import jax
import jax.numpy as jnp

from ratebp_jax import neuron as neuron_lib
from ratebp_jax import online, ratebp
from ratebp_jax import remat as remat_lib

MULTI_STEP_MODES = ("bptt", "bptt_remat", "spike", "eval")
STEP_MODES = ("bptt_step", "spike_step", "ottt_step")
MODES = MULTI_STEP_MODES + STEP_MODES + ("rate",)
RECORD = "spike_record"  # per layer: rate/elig (LIF), mean/inv_var (BatchNorm)
MEMBRANE = "membrane"    # per LIF layer: the state carried between time steps
TRACE = "presynaptic_trace"  # per Conv/Dense fed by spikes, in "ottt_step": â_{t-1}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class LIF(nn.Module):
    """A LIF population (SPEC §1) in any mode; input and output of one shape."""

    neuron: neuron_lib.LIFParams = neuron_lib.LIFParams()

    @nn.compact
    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        check_mode(mode)
        if mode in ("bptt", "bptt_remat", "eval"):
            # written out, no XLA loop: BPTT keeps every step anyway, and XLA:CPU allocates a loop's
            # stacked outputs at the start of the program, alive until the backward pass reads them
            # (README, "Cost of one training step against T")
            return neuron_lib.lif_scan(x, self.neuron, unroll=True)
        if mode == "spike":
            spikes, rate, elig = ratebp.lif_spike_pass(x, self.neuron)
            self.put_variable(RECORD, "rate", rate)
            self.put_variable(RECORD, "elig", elig)
            return spikes
        if mode == "rate":
            return ratebp.rate_grad(x, self.get_variable(RECORD, "rate"), self.get_variable(RECORD, "elig"))
        if mode in ("bptt_step", "ottt_step"):
            v = self.variable(MEMBRANE, "v", jnp.zeros_like, x)
            v.value, spikes = neuron_lib.lif_step(v.value, x, self.neuron)
            return spikes
        # spike_step: the trace's sums go to RECORD, its carried state to MEMBRANE.
        state = {"v": self.variable(MEMBRANE, "v", jnp.zeros_like, x),
                 "kappa": self.variable(MEMBRANE, "kappa", ratebp.kappa_zeros_like, x, self.neuron)}
        sums = {name: self.variable(RECORD, name, jnp.zeros_like, x) for name in ("rate", "elig")}
        trace = ratebp.LIFTrace(state["v"].value, state["kappa"].value, sums["rate"].value, sums["elig"].value)
        trace, spikes = ratebp.lif_trace_step(trace, x, self.neuron)
        state["v"].value, state["kappa"].value = trace.v, trace.kappa
        sums["rate"].value, sums["elig"].value = trace.spike_sum, trace.elig_sum
        return spikes


class BatchNorm(nn.Module):
    """BatchNorm over the last axis in any mode (PyTorch semantics, SPEC §3).

    Running statistics follow PyTorch's BatchNorm2d: momentum 0.1 (Flax's
    0.9), epsilon 1e-5, the running variance updated with the unbiased batch
    variance, and a counter of updates (PyTorch's ``num_batches_tracked``).
    With ``axis_name`` every statistic is a mean over the devices of that
    axis (SyncBatchNorm). Statistics are computed in at least float32.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        check_mode(mode)
        features = x.shape[-1]
        stats_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stats_dtype)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), stats_dtype)
        num_updates = self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)
        x_stats = x.astype(jnp.promote_types(x.dtype, stats_dtype))

        if mode == "rate":
            spike_var = 1 / self.get_variable(RECORD, "inv_var") - self.epsilon
            y = ratebp.rate_batchnorm(x_stats, self.get_variable(RECORD, "mean"), spike_var, scale, bias,
                                      self.epsilon, self.axis_name)
            return y.astype(self.dtype or x.dtype)
        if mode == "eval":
            mean, var = running_mean.value, running_var.value
        else:
            mean, var = ratebp.batch_moments(x_stats, self.axis_name)
            if not self.is_initializing():
                self._update_running_stats(x, mean, var, running_mean, running_var, num_updates)
            if mode == "spike":
                self.put_variable(RECORD, "mean", mean)
                self.put_variable(RECORD, "inv_var", 1 / (var + self.epsilon))
            elif mode == "spike_step":
                sums = {name: self.variable(RECORD, name, jnp.zeros_like, mean) for name in ("mean", "inv_var")}
                sums["mean"].value += mean
                sums["inv_var"].value += 1 / (var + self.epsilon)
        y = ratebp.normalize(x_stats, mean, var, scale, bias, self.epsilon)
        return y.astype(self.dtype or x.dtype)

    def _update_running_stats(self, x, mean, var, running_mean, running_var, num_updates):
        batch_mean, batch_var = jax.lax.stop_gradient((mean, var))
        count = x.size // x.shape[-1]
        if self.axis_name is not None:
            count *= jax.lax.axis_size(self.axis_name)
        unbiased_var = batch_var * (count / max(count - 1, 1))
        m = self.momentum
        running_mean.value = m * running_mean.value + (1 - m) * batch_mean
        running_var.value = m * running_var.value + (1 - m) * unbiased_var
        num_updates.value += 1



def _presynaptic_trace(module: nn.Module, x: jax.Array) -> jax.Array:
    """â_t = trace_decay · â_{t-1} + x_t of x [B, ...], carried in TRACE; no gradient."""
    trace = module.variable(TRACE, "input", jnp.zeros_like, x)
    trace.value = module.trace_decay * trace.value + jax.lax.stop_gradient(x)
    return trace.value


def _as_function(module: nn.Module):
    """The flax layer ``module`` (unbound) as a pure function (params, x) -> y."""
    plain = module.clone(parent=None)
    return lambda params, x: plain.apply({"params": params}, x, "eval")


class Conv(nn.Conv):
    """nn.Conv (same arguments, same parameters) called as conv(x, mode); conv(x) is conv(x, "eval").

    In every mode it computes nn.Conv's value, and with gradients autodiff's
    gradients of it; in the step modes with gradients ("bptt_step",
    "ottt_step") through online.conv, whose gradients are written in the form
    ``conv_gradients`` names (online.CONV_GRADIENTS: XLA:CPU's native layouts
    when lowered for the CPU, autodiff's form elsewhere, unless told). In
    "ottt_step" a conv with spiking_input takes its kernel gradient at the
    presynaptic trace of its input x [..., *spatial, C] instead (OTTT, SPEC
    §3.4). In the other modes it is nn.Conv itself.

    nn.Conv's arguments, in every mode (one ValueError naming the argument
    and the layer, at the first call, for those refused):
      features, kernel_size       supported (any number of spatial axes)
      strides                     supported (int or one per spatial axis)
      padding                     supported: "SAME", "VALID", "SAME_LOWER", int, a
                                  sequence of ints and/or (low, high) pairs,
                                  "CIRCULAR", "REFLECT", "CAUSAL" (1-D)
      kernel_dilation             supported (int or one per spatial axis)
      feature_group_count         supported
      use_bias, mask              supported
      kernel_init, bias_init      supported
      dtype, param_dtype, precision, promote_dtype   supported
      input_dilation (≠ 1)        refused: a transposed convolution, whose
                                  gradients the step modes do not write
      conv_general_dilated, conv_general_dilated_cls   refused: flax's deprecated
                                  hooks, which the step modes would bypass
    Inputs may have any number of leading axes (flattened into one, as
    nn.Conv does). Our own fields: spiking_input, trace_decay (OTTT) and
    conv_gradients ("auto", "native_layouts" or "autodiff"; the same numbers).
    """

    spiking_input: bool = True   # False for a conv fed by real values (the image): OTTT uses x itself
    trace_decay: float = 0.2     # λ of the presynaptic trace (the LIF decay)
    conv_gradients: str = "auto"  # how the step modes write the gradients (online.CONV_GRADIENTS)

    @nn.compact
    def __call__(self, x: jax.Array, mode: str = "eval") -> jax.Array:
        check_mode(mode)
        self._check_arguments()
        if mode not in ("bptt_step", "ottt_step") or not self.has_variable("params", "kernel"):
            return super().__call__(x)  # (the second case: initialising, which creates the parameters)
        grad_input = _presynaptic_trace(self, x) if mode == "ottt_step" and self.spiking_input else x
        return self._step_conv(x, grad_input)

    def _check_arguments(self) -> None:
        where = f"Conv {'/'.join(self.path)!r}" if self.path else "Conv"
        if any(d != 1 for d in _per_axis(self.input_dilation, 1)):
            raise ValueError(f"{where}: input_dilation={self.input_dilation!r} is not supported (the step modes "
                             "write a conv's gradients themselves); use 1")
        for hook in ("conv_general_dilated", "conv_general_dilated_cls"):
            if getattr(self, hook) is not None:
                raise ValueError(f"{where}: {hook} is not supported (the step modes call "
                                 "lax.conv_general_dilated themselves); leave it None")
        if self.conv_gradients not in online.CONV_GRADIENTS:
            raise ValueError(f"{where}: conv_gradients must be one of {online.CONV_GRADIENTS}, "
                             f"got {self.conv_gradients!r}")

    def _step_conv(self, x: jax.Array, grad_input: jax.Array) -> jax.Array:
        """nn.Conv's value of x [..., *spatial, C_in] by online.conv, kernel gradient at grad_input (like x)."""
        params = self.variables["params"]
        kernel = params["kernel"] if self.mask is None else params["kernel"] * self.mask
        num_spatial = kernel.ndim - 2
        batch_shape = x.shape[:x.ndim - num_spatial - 1]
        x, grad_input = (a.reshape(-1, *a.shape[len(batch_shape):]) for a in (x, grad_input))
        strides, dilation = _per_axis(self.strides, num_spatial), _per_axis(self.kernel_dilation, num_spatial)
        padding = canonicalize_padding(self.padding, num_spatial)
        if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):  # as nn.Conv: the input padded, then "VALID"
            x, grad_input = (_pad_as_flax(a, padding, kernel.shape[:-2], dilation) for a in (x, grad_input))
            padding = "VALID"
        x, kernel, bias = self.promote_dtype(x, kernel, params.get("bias"), dtype=self.dtype)
        y = online.conv(x, kernel, grad_input, strides=strides, padding=padding, kernel_dilation=dilation,
                        feature_group_count=self.feature_group_count, precision=self.precision,
                        gradients=self.conv_gradients)
        if self.use_bias:
            y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
        return y.reshape(batch_shape + y.shape[1:])


def _per_axis(value: int | Sequence[int] | None, num_spatial: int) -> tuple[int, ...]:
    """nn.Conv's reading of strides and dilations: None is 1, an int is the same on every axis."""
    value = 1 if value is None else value
    return (value,) * num_spatial if isinstance(value, int) else tuple(value)


def _pad_as_flax(x: jax.Array, padding: str, window: Sequence[int], dilation: Sequence[int]) -> jax.Array:
    """x [B, *spatial, C] padded as nn.Conv pads it for "CIRCULAR", "REFLECT" and "CAUSAL" (1-D)."""
    spans = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    if padding == "CAUSAL":  # 1-D only: nn.Conv refuses the others when initialising
        return jnp.pad(x, ((0, 0), (spans[0] - 1, 0), (0, 0)))
    pads = [(0, 0), *(((span - 1) // 2, span // 2) for span in spans), (0, 0)]
    return jnp.pad(x, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])


class Dense(nn.Dense):
    """nn.Dense (same arguments, same parameters) called as dense(x, mode); dense(x) is dense(x, "eval").

    In every mode it is nn.Dense itself, with every argument of nn.Dense,
    except that in "ottt_step" a layer with spiking_input takes its weight
    gradient at the presynaptic trace of its input x [..., features] (OTTT,
    SPEC §3.4): online.custom_weight_grad around nn.Dense, the weight
    gradient autodiff's at the trace.
    """

    spiking_input: bool = True
    trace_decay: float = 0.2

    @nn.compact
    def __call__(self, x: jax.Array, mode: str = "eval") -> jax.Array:
        check_mode(mode)
        if mode != "ottt_step" or not self.spiking_input or not self.has_variable("params", "kernel"):
            return super().__call__(x)
        trace = _presynaptic_trace(self, x)
        layer = _as_function(self)
        return online.custom_weight_grad(layer, online.autodiff_weight_grad(layer), self.variables["params"], x, trace)


def remat(block: type[nn.Module]) -> type[nn.Module]:
    """``block`` (a flax Module class called as block(x, mode)) marked as a block whose
    activations "bptt_remat" recomputes in the backward pass, as nn.remat(block) marks one
    for jax.checkpoint.

        Block = remat(Block)                 # or: @remat on the class
        y = Block(features, name="block1")(x, mode)

    The marked class has block's fields, plus ``remat_form`` (remat.FORMS, default "auto":
    jax.checkpoint, or on CPU a custom_vjp; see ratebp_jax.remat) and block's class name,
    so its variables have the same paths. In every mode but "bptt_remat" it is block; in
    "bptt_remat" its backward pass keeps only x and its variables. Any block content works:
    with or without parameters and BatchNorm. The method bptt_remat refuses a model that
    marks no block.
    """
    if not (isinstance(block, type) and issubclass(block, nn.Module)):
        raise TypeError(f"remat takes a flax Module class (the block), got {block!r}")
    if getattr(block, "recomputes_in_backward", False):
        return block

    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        if mode != "bptt_remat" or self.is_initializing():
            return block.__call__(self, x, mode=mode)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(block) if f.name not in ("parent", "name")}
        plain = block(**fields, parent=None)  # the block unmarked and unbound: a pure function of its variables

        def block_fn(params, batch_stats, x):
            y, state = plain.apply({"params": params, "batch_stats": batch_stats}, x, mode=mode, mutable=["batch_stats"])
            return y, state.get("batch_stats", {})

        own = self.variables
        y, batch_stats = remat_lib.recompute(block_fn, own.get("params", {}), own.get("batch_stats", {}), x,
                                             self.remat_form)
        for name, stats in batch_stats.items():
            self.put_variable("batch_stats", name, stats)
        return y

    namespace = {"__annotations__": {"remat_form": str}, "remat_form": "auto", "__call__": __call__,
                 "recomputes_in_backward": True, "__module__": block.__module__, "__qualname__": block.__qualname__,
                 "__doc__": block.__doc__}
    return type(block.__name__, (block,), namespace)
