"""The rate-based gradient (SPEC §3.1–3.2) as pure functions.

A training step runs a spike pass without gradients, which records per LIF
layer the firing rate r and the eligibility e, and per BatchNorm layer the
statistics of its input; then a rate pass with gradients through a graph with
no time axis, in which a LIF layer outputs r with derivative e
(``rate_grad``) and a BatchNorm layer normalises with the recorded statistics
while its gradient flows through the statistics of the rate input
(``rate_moments``; ``rate_batchnorm`` is the whole layer with a lean backward).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ratebp_jax.neuron import LIFParams, as_lif_params, charge, check_time_major, reset_membrane, surrogate_grad


class LIFTrace(NamedTuple):
    """What a spike pass carries per LIF neuron from one step to the next.

    v: membrane potential v_{t-1}.
    kappa: λ·f_{t-1}·κ_{t-1}, so that κ_t = 1 + kappa (0 before the first step);
        a scalar where κ_t depends on t only (see kappa_zeros_like), else one per neuron.
    spike_sum: Σ s so far (x's dtype, or an integer count).      elig_sum: Σ κ·σ'(u − ϑ) so far.
    """

    v: jax.Array
    kappa: jax.Array
    spike_sum: jax.Array
    elig_sum: jax.Array

    @classmethod
    def zeros_like(cls, x: jax.Array, neuron: LIFParams) -> "LIFTrace":
        zero = jnp.zeros_like(x)
        return cls(zero, kappa_zeros_like(x, neuron), zero, zero)


def kappa_zeros_like(x: jax.Array, neuron: LIFParams) -> jax.Array:
    """The initial LIFTrace.kappa: zeros like x, or one scalar zero where κ_t = Σ_{k<t} λ^k
    is the same for every neuron (soft reset, detached), so that the spike pass carries
    one tensor less per LIF layer."""
    uniform = neuron.reset == "soft" and neuron.detach_reset
    return jnp.zeros((), x.dtype) if uniform else jnp.zeros_like(x)


def _kappa_factor(u, s, sg, neuron: LIFParams):
    """∂v_t/∂u_t along a uniform input shift, per reset variant (SPEC §3.1)."""
    if neuron.reset == "soft":
        return 1.0 if neuron.detach_reset else 1 - neuron.threshold * sg
    if neuron.detach_reset:
        return 1 - s
    return (1 - s) - u * sg


def lif_trace_step(trace: LIFTrace, x: jax.Array, neuron: LIFParams) -> tuple[LIFTrace, jax.Array]:
    """One spike-pass step: (trace_{t-1}, x_t) -> (trace_t, s_t); no gradient.

    κ_t = ∂u_t/∂c when every input is shifted by c, so Σ_t κ_t σ'(u_t − ϑ)
    accumulates T times the derivative of the rate with respect to c.
    """
    x = jax.lax.stop_gradient(x)
    u = charge(trace.v, x, neuron)
    z = u - neuron.threshold
    s = (z >= 0).astype(x.dtype)
    sg = surrogate_grad(z, neuron.surrogate, neuron.alpha)
    kappa = 1 + trace.kappa
    next_trace = LIFTrace(
        v=reset_membrane(u, s, neuron),
        kappa=neuron.decay * _kappa_factor(u, s, sg, neuron) * kappa,
        spike_sum=trace.spike_sum + s.astype(trace.spike_sum.dtype),
        elig_sum=trace.elig_sum + kappa * sg,
    )
    return next_trace, s


def lif_spike_pass(x: jax.Array, neuron: LIFParams | None = None,
                   **neuron_kwargs) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Spikes, rate and eligibility of a LIF population, in one scan; no gradient.

    The spike pass of one LIF layer (SPEC §3.1): its spikes feed the next
    layer, its rate and eligibility the rate pass (rate_grad).

    Args:
      x: [T, ...] input currents.
      neuron: LIFParams, or its fields as keywords (as for lif_scan).
    Returns:
      spikes [T, ...], rate [...] and eligibility [...], all of x's dtype.
    """
    neuron = as_lif_params(neuron, **neuron_kwargs)
    # The spikes are written into a carried copy of x (only written in the loop: a buffer that
    # is also read there is copied every step) rather than being the scan's stacked output:
    # XLA:CPU allocates stacked outputs at the start of the program, so every layer's spikes
    # were alive at once (README, "Cost of one training step against T").
    check_time_major(x)

    def step(carry, inputs):
        (trace, spikes), (t, x_t) = carry, inputs
        trace, s = lif_trace_step(trace, x_t, neuron)
        return (trace, spikes.at[t].set(s)), None

    x = jax.lax.stop_gradient(x)
    steps = (jnp.arange(x.shape[0]), x)
    (trace, spikes), _ = jax.lax.scan(step, (LIFTrace.zeros_like(x[0], neuron), x), steps)
    num_steps = x.shape[0]
    return spikes, trace.spike_sum / num_steps, trace.elig_sum / num_steps


def lif_rate_stats(x: jax.Array, neuron: LIFParams | None = None, **neuron_kwargs) -> tuple[jax.Array, jax.Array]:
    """Rate r = mean_t s_t and eligibility e = mean_t κ_t σ'(u_t − ϑ) (SPEC §3.1).

    Args:
      x: [T, ...] input currents.
      neuron: LIFParams, or its fields as keywords (as for lif_scan).
    Returns:
      (rate, elig), each of shape x.shape[1:] and x's dtype; no gradient.
      elig is the surrogate derivative of rate with respect to a shift added
      to every x_t.

    Both are means over t. A rate pass built on them (rate_grad) gives the
    gradient of its own loss; the library's rate methods, as the reference,
    scale that gradient by 1/T (they differentiate loss / T; see rate_grad).
    lif_spike_pass returns the spikes too, from the same scan.
    """
    _, rate, elig = lif_spike_pass(x, as_lif_params(neuron, **neuron_kwargs))
    return rate, elig


@jax.custom_vjp
def rate_grad(x: jax.Array, rate: jax.Array, elig: jax.Array) -> jax.Array:
    """The rate-pass LIF: value ``rate``, vector-Jacobian product g -> g · elig.

    Args:
      x: [B, ...] rate-pass input (time-mean of the currents).
      rate, elig: [B, ...] recorded by the spike pass; they get no gradient.
    Returns:
      rate, with the derivative elig with respect to x.

    The 1/T scaling (SPEC §3.2): the library's rate methods differentiate
    loss / T, as the reference does, while reporting the loss itself; a
    hand-written rate pass built on rate_grad matches their gradients only if
    it divides its loss (or its gradients) by T too. At T = 1 its gradients
    then equal BPTT's (SPEC oracle 1).
    """
    del x, elig
    return rate


def _rate_grad_fwd(x, rate, elig):
    return rate, elig


def _rate_grad_bwd(elig, g):
    return g * elig, jnp.zeros_like(elig), jnp.zeros_like(elig)


rate_grad.defvjp(_rate_grad_fwd, _rate_grad_bwd)


# --- BatchNorm statistics ---------------------------------------------------

def _mean(x: jax.Array, axis_name: str | None) -> jax.Array:
    """Mean over every axis but the last (channels), across devices if axis_name."""
    m = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
    return m if axis_name is None else jax.lax.pmean(m, axis_name)


def batch_moments(x: jax.Array, axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance of x ([..., C]) over all other axes.

    With axis_name the moments are those of the global batch (pmean over the
    devices of equal local batches), as SyncBatchNorm computes them.
    Returns ([C], [C]).
    """
    mean = _mean(x, axis_name)
    return mean, _mean(jnp.square(x - mean), axis_name)


def rate_moments(x: jax.Array, spike_mean: jax.Array, spike_var: jax.Array,
                 axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Rate-pass BatchNorm statistics (SPEC §3.2).

    Values are the spike pass's (μ_s, σ²_s); gradients flow through the batch
    statistics of the rate input x ([..., C]):
        μ  = μ_s + m − sg(m),            m = mean(x)
        σ² = relu(σ²_s + q − sg(q)),     q = mean((x − μ)²)
    Returns ([C], [C]).
    """
    m = _mean(x, axis_name)
    mean = spike_mean + m - jax.lax.stop_gradient(m)
    q = _mean(jnp.square(x - mean), axis_name)
    var = jax.nn.relu(spike_var + q - jax.lax.stop_gradient(q))
    return mean, var


def normalize(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array,
              epsilon: float) -> jax.Array:
    """γ (x − μ) / sqrt(σ² + ε) + β over the last axis."""
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def rate_batchnorm(x: jax.Array, spike_mean: jax.Array, spike_var: jax.Array, scale: jax.Array, bias: jax.Array,
                   epsilon: float, axis_name: str | None = None) -> jax.Array:
    """The rate pass's BatchNorm: normalize(x, *rate_moments(x, spike_mean, spike_var)).

    Same values and gradients as that composition (SPEC §3.2), with the
    backward pass written out so that only x ([..., C]) is kept for it, not
    the centred and normalised copies autodiff would keep. With
    m = mean(x), r = 1 / sqrt(σ²_s + ε) and means over all axes but the last
    (and over the devices of axis_name):
        dx = γ r (g − mean(g) − r² mean(g (x − μ_s)) (x − m))
    where the last term is dropped for channels with σ²_s = 0 (the relu of
    rate_moments). spike_mean and spike_var [C] get no gradient.
    """
    return normalize(x, spike_mean, spike_var, scale, bias, epsilon)


def _rate_batchnorm_fwd(x, spike_mean, spike_var, scale, bias, epsilon, axis_name):
    y = normalize(x, spike_mean, spike_var, scale, bias, epsilon)
    return y, (x, _mean(x, axis_name), spike_mean, spike_var, scale)


def _rate_batchnorm_bwd(epsilon, axis_name, residuals, g):
    x, x_mean, spike_mean, spike_var, scale = residuals
    r = jax.lax.rsqrt(spike_var + epsilon)
    sum_axes = tuple(range(x.ndim - 1))
    centred = x - spike_mean
    var_term = jnp.where(spike_var > 0, r * r * _mean(g * centred, axis_name), 0)
    dx = scale * r * (g - _mean(g, axis_name) - var_term * (x - x_mean))
    d_scale = jnp.sum(g * centred, axis=sum_axes) * r
    return dx, jnp.zeros_like(spike_mean), jnp.zeros_like(spike_var), d_scale, jnp.sum(g, axis=sum_axes)


rate_batchnorm.defvjp(_rate_batchnorm_fwd, _rate_batchnorm_bwd)
