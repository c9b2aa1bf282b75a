"""Leaky integrate-and-fire dynamics as pure functions (SPEC §1).

Per neuron, for t = 1..T, with input current x_t, decay λ and threshold ϑ:

    u_t = λ · v_{t-1} + x_t          charge (no input scaling)
    s_t = H(u_t − ϑ)                 fire; H(z) = 1 if z ≥ 0 else 0
    v_t = u_t − ϑ · s_t              soft reset (default)
    v_t = u_t · (1 − s_t)            hard reset to 0
    v_0 = 0

H is differentiated with a surrogate derivative σ'(z), z = u_t − ϑ. Arrays
are time-major: ``x`` has shape ``[T, ...]`` with any trailing shape, and
every function keeps the dtype of its input.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

RESETS = ("soft", "hard")
SURROGATES = ("sigmoid", "arctan", "piecewise_quadratic", "fast_sigmoid")


@dataclasses.dataclass(frozen=True)
class LIFParams:
    """Settings of one LIF population; frozen so it can be a static argument.

    Attributes:
      decay: membrane decay λ in [0, 1). The reference stores it as the logit
        w with λ = sigmoid(w); λ = 0.2 is its default.
      threshold: firing threshold ϑ > 0.
      reset: "soft" (subtract ϑ) or "hard" (set to 0).
      detach_reset: if True the spike in the reset term carries no gradient.
      surrogate: name of the surrogate derivative, one of SURROGATES.
      alpha: sharpness of the surrogate (α = 4 for the reference's sigmoid).
    """

    decay: float = 0.2
    threshold: float = 1.0
    reset: str = "soft"
    detach_reset: bool = True
    surrogate: str = "sigmoid"
    alpha: float = 4.0

    def __post_init__(self):
        if self.reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {self.reset!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {self.surrogate!r}")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold!r}")
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must lie in [0, 1), got {self.decay!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")


def as_lif_params(neuron: LIFParams | None = None, **kwargs) -> LIFParams:
    """Returns ``neuron`` with ``kwargs`` replaced, or LIFParams(**kwargs)."""
    if neuron is None:
        return LIFParams(**kwargs)
    return dataclasses.replace(neuron, **kwargs) if kwargs else neuron


def surrogate_grad(z: jax.Array, surrogate: str = "sigmoid", alpha: float = 4.0) -> jax.Array:
    """Surrogate derivative σ'(z) of the Heaviside step, same shape and dtype as z.

    sigmoid:              α · sig(αz) · (1 − sig(αz))
    arctan:               (α/2) / (1 + (π/2 · α z)²)                  (SpikingJelly ATan)
    piecewise_quadratic:  max(0, α − α²|z|), a triangle of width 2/α  (SpikingJelly PiecewiseQuadratic)
    fast_sigmoid:         (α/2) / (1 + α|z|)²                         (SuperSpike's shape,
                          scaled to unit area like the others, as SpikingJelly SoftSign)
    All four integrate to 1 over z, so α sets only their width.
    """
    if surrogate == "sigmoid":
        sig = jax.nn.sigmoid(alpha * z)
        return alpha * sig * (1 - sig)
    if surrogate == "arctan":
        return (alpha / 2) / (1 + jnp.square(math.pi / 2 * alpha * z))
    if surrogate == "piecewise_quadratic":
        return jnp.maximum(alpha - alpha * alpha * jnp.abs(z), 0)
    if surrogate == "fast_sigmoid":
        return (alpha / 2) / jnp.square(1 + alpha * jnp.abs(z))
    raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def spike_fn(z: jax.Array, surrogate: str = "sigmoid", alpha: float = 4.0) -> jax.Array:
    """Heaviside H(z) (1 where z ≥ 0) whose derivative is surrogate_grad(z)."""
    return (z >= 0).astype(z.dtype)


def _spike_fwd(z, surrogate, alpha):
    return spike_fn(z, surrogate, alpha), z


def _spike_bwd(surrogate, alpha, z, g):
    return (g * surrogate_grad(z, surrogate, alpha),)


spike_fn.defvjp(_spike_fwd, _spike_bwd)


def charge(v: jax.Array, x: jax.Array, neuron: LIFParams) -> jax.Array:
    """u_t = λ v_{t-1} + x_t: the potential charged by the input, before firing and reset (SPEC §1)."""
    return neuron.decay * v + x


def reset_membrane(u: jax.Array, s: jax.Array, neuron: LIFParams) -> jax.Array:
    """v_t from the charged potential u_t and the spike s_t (SPEC §1)."""
    if neuron.detach_reset:
        s = jax.lax.stop_gradient(s)
    if neuron.reset == "soft":
        return u - neuron.threshold * s
    return u * (1 - s)


def lif_step(v: jax.Array, x: jax.Array, neuron: LIFParams) -> tuple[jax.Array, jax.Array]:
    """One time step: (v_{t-1}, x_t) -> (v_t, s_t), all of one shape; differentiable."""
    u = charge(v, x, neuron)
    s = spike_fn(u - neuron.threshold, neuron.surrogate, neuron.alpha)
    return reset_membrane(u, s, neuron), s


def check_time_major(x: jax.Array) -> None:
    """Raises ValueError unless x is floating-point currents [T, ...] with T ≥ 1."""
    if jnp.ndim(x) < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be time-major [T, ...] with T >= 1, got shape {jnp.shape(x)}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"x must be floating-point input currents, got dtype {jnp.result_type(x)}")


def lif_scan(x: jax.Array, neuron: LIFParams | None = None, *, unroll: bool | int = 1,
             **neuron_kwargs) -> jax.Array:
    """Spikes of a LIF population driven by currents x (BPTT-differentiable).

    Args:
      x: [T, ...] input currents, float dtype.
      neuron: LIFParams; or give its fields as keywords (decay=0.2,
        threshold=1.0, reset="soft", detach_reset=True, surrogate="sigmoid",
        alpha=4.0).
      unroll: lax.scan's: steps per loop iteration; True writes all T out
        (no loop).
    Returns:
      [T, ...] spikes of x's dtype with values 0 or 1.
    """
    neuron = as_lif_params(neuron, **neuron_kwargs)
    check_time_major(x)
    step = functools.partial(lif_step, neuron=neuron)
    _, spikes = jax.lax.scan(step, jnp.zeros_like(x[0]), x, unroll=unroll)
    return spikes
