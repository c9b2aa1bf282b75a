"""Synaptic operations of one conv or linear layer at inference, and their energy.

A spike-driven layer does one accumulate (AC) per input spike and synapse: for
each output element, one per nonzero input in its receptive field, at each
time step. A layer fed real values multiplies as well: a multiply-accumulate
(MAC) per nonzero input and synapse. An ANN of the same architecture does a MAC
for every (output element, input in its receptive field) pair, once per image.
Padding is no input: a conv's padded border costs nothing. Bias additions are
not counted.

Energy per operation, 32-bit floating point in a 45 nm process (M. Horowitz,
"Computing's energy problem (and what we can do about it)", ISSCC 2014):
E_AC_PJ, an add, and E_MAC_PJ, a multiply (3.7 pJ) plus an add. SNN papers
use them to compare a spiking network with its ANN.

    counts = receptive_counts(conv, kernel.shape, spikes)   # int32 [T, B]
    energy_pj(acs, macs)                                    # acs · E_AC_PJ + macs · E_MAC_PJ
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

E_AC_PJ = 0.9   # pJ per 32-bit float add at 45 nm (Horowitz, ISSCC 2014)
E_MAC_PJ = 4.6  # pJ per 32-bit float multiply-accumulate: 3.7 pJ multiply + 0.9 pJ add (ibid.)

KINDS = (nn.Conv, nn.Dense)  # the layers that are counted


def receptive_counts(layer: nn.Conv | nn.Dense, kernel_shape: tuple[int, ...], x: jax.Array) -> jax.Array:
    """int32 [T, B]: per step and example, the sum over the layer's output elements
    of the nonzero inputs in each one's receptive field.

    layer: an unbound nn.Conv or nn.Dense; its own strides, padding, dilations
    and feature groups are used, so borders and strides are counted exactly.
    kernel_shape: its kernel's shape ([..., C_in / groups, features]).
    x: its input [T, B, ...]. Computed as the layer itself with a kernel of
    ones, one output feature per group, applied to the nonzero mask (every
    feature of a group sees the same inputs), in float32 at full precision:
    exact while a receptive field has fewer than 2**24 inputs and a step's
    count fits in int32 (the largest layer of the zoo needs 1.2e8).
    """
    groups = getattr(layer, "feature_group_count", 1)
    counter = layer.clone(parent=None, features=groups, use_bias=False, dtype=jnp.float32,
                          param_dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    ones = jnp.ones(tuple(kernel_shape[:-1]) + (groups,), jnp.float32)
    per_element = counter.apply({"params": {"kernel": ones}}, (x != 0).astype(jnp.float32))
    per_step = jnp.round(per_element).astype(jnp.int32).reshape(x.shape[:2] + (-1,)).sum(axis=-1)
    return per_step * (kernel_shape[-1] // groups)


def dense_macs(layer: nn.Conv | nn.Dense, kernel_shape: tuple[int, ...], x: jax.Array) -> jax.Array:
    """int32 scalar: the MACs of the layer on one example of x [T, B, ...] with no zero input (an ANN's)."""
    return receptive_counts(layer, kernel_shape, jnp.ones((1, 1) + x.shape[2:], jnp.float32))[0, 0]


def usual_macs(layer: nn.Conv | nn.Dense, kernel_shape: tuple[int, ...], x: jax.Array) -> int:
    """The MACs of the layer on one example of x [T, B, ...] as thop, ptflops, syops and SNN papers
    count an ANN's: every output element × the inputs of its kernel (kh·kw·C_in/groups for a conv,
    in_features for a dense), the padded border included (dense_macs leaves it out)."""
    counter = layer.clone(parent=None, use_bias=False)
    out = jax.eval_shape(lambda k, x: counter.apply({"params": {"kernel": k}}, x),
                         jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32),
                         jax.ShapeDtypeStruct((1, 1) + tuple(x.shape[2:]), jnp.float32))
    return math.prod(out.shape[2:]) * math.prod(kernel_shape[:-1])


def literature_ops(input_rate: float, macs: float, timesteps: int) -> float:
    """The per-layer estimate of SNN papers: input firing rate × usual_macs × T synaptic operations
    (ours, from the spikes themselves, count each receptive field's actual nonzero inputs)."""
    return input_rate * macs * timesteps


def is_binary(x: jax.Array) -> jax.Array:
    """bool scalar: every element of x is 0 or 1 (spikes)."""
    return jnp.all((x == 0) | (x == 1))


def energy_pj(acs: float, macs: float, *, e_ac_pj: float = E_AC_PJ, e_mac_pj: float = E_MAC_PJ) -> float:
    """Energy in pJ of acs accumulates and macs multiply-accumulates."""
    return acs * e_ac_pj + macs * e_mac_pj
