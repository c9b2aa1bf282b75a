"""How close two methods' weight gradients are: cosine similarity per layer and overall (SPEC oracle 4).

    cosines = grad_similarity(model, variables, images, labels, timesteps=4,
                              pairs=[("rate_m", "bptt_m")])
    # {("rate_m", "bptt_m"): {"overall": ..., "conv0": ..., ..., "classifier": ...}}
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from ratebp_jax.analysis.common import call_order, measured_step, subtree


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two pytrees of one structure, as flat vectors (computed in float64)."""
    a = np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(b)])
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("timesteps", "k"))
def _grads(method: str, model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *,
           timesteps: int, k: int | None = None) -> Any:
    return measured_step(method, model, variables, images, labels, timesteps=timesteps, k=k).grads


def grad_similarity(model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *, timesteps: int,
                    pairs: Sequence[tuple[str, str]] = (("rate_m", "bptt_m"), ("rate_s", "bptt_s")),
                    k: int | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """Cosine similarity of the weight gradients of two methods on one batch (SPEC oracle 4).

    images: [B, H, W, C] or [B, T, H, W, C]; labels: int [B]. Returns, per
    pair (a, b) of METHODS: {"overall": cosine over the weights (kernels) of
    all conv and linear layers as one vector, then per layer in network order:
    cosine of that layer's kernel}. Biases and BatchNorm parameters are left
    out, as in the paper's measurement. k: sltt_k's K.
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
