"""Firing rates: the fraction of each LIF layer's neurons that spike at each time step.

    rates = firing_rates(model, variables, images, timesteps=4)   # {"lif1": float [T], ...}
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from ratebp_jax import inputs
from ratebp_jax.analysis.common import call_order, inference_variables, subtree
from ratebp_jax.layers import LIF


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

    images: [B, H, W, C] or [B, T, H, W, C]. mode "eval" (running BatchNorm
    statistics, as at test time) or "spike" (batch statistics, as in
    training). Returns {layer path: float [T]}: the fraction of the layer's
    neurons (over the batch and all positions) that spike at step t. Average
    over t for the layer's mean rate.
    """
    variables = inference_variables(variables)
    outputs = _lif_outputs(model, variables, images, timesteps=timesteps, mode=mode)
    layers = call_order(model, variables, images, timesteps=timesteps, kinds=(LIF,))
    return {layer: np.asarray(subtree(outputs, layer)["__call__"][0]) for layer in layers}
