"""The registry of architectures: NAMES, their INPUT_SHAPES, create and init.

A module of its own so that ``reference`` (weight conversion) can build a
model without importing the package that imports it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ratebp_jax import inputs
from ratebp_jax.models.common import Layers
from ratebp_jax.models.imagenet_resnet import preact_resnet34, sew_resnet34
from ratebp_jax.models.resnet import resnet18, resnet19
from ratebp_jax.models.vgg import vgg
from ratebp_jax.neuron import LIFParams

_BUILDERS = {
    "resnet18": resnet18,
    "resnet19": resnet19,
    "vgg11": vgg("vgg11"),
    "vgg13": vgg("vgg13"),
    "vggsnn_cifar": vgg("vggsnn_cifar"),
    "vggsnn_dvs": vgg("vggsnn_dvs"),
    "sew_resnet34": sew_resnet34,
    "preact_resnet34": preact_resnet34,
    "digits_vgg": vgg("digits_vgg"),
}
NAMES = tuple(_BUILDERS)

# The input each model was designed for: [H, W, C].
INPUT_SHAPES = {name: (32, 32, 3) for name in NAMES} | {
    "vggsnn_dvs": (48, 48, 2),
    "sew_resnet34": (224, 224, 3),
    "preact_resnet34": (224, 224, 3),
    "digits_vgg": (8, 8, 1),
}


def create(name: str, *, num_classes: int, in_channels: int = 3, dtype: Any = jnp.float32,
           axis_name: str | None = None, **neuron_kwargs) -> nn.Module:
    """A model of NAMES.

    Args:
      num_classes: size of the classifier output.
      in_channels: channels of the input images; checked when the model runs.
      dtype: compute dtype (float32, float64 or bfloat16). Parameters are
        float64 for float64, float32 otherwise.
      axis_name: device axis over which BatchNorm statistics are averaged
        (the pmap axis name, "batch" in the train step), or None.
      neuron_kwargs: LIFParams fields (decay, threshold, reset, detach_reset,
        surrogate, alpha).
    """
    if name not in _BUILDERS:
        raise ValueError(f"model must be one of {NAMES}, got {name!r}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
    dtype = jnp.dtype(dtype)
    layers = Layers(neuron=LIFParams(**neuron_kwargs), axis_name=axis_name, dtype=dtype,
                    param_dtype=jnp.float64 if dtype == jnp.float64 else jnp.float32)
    return _BUILDERS[name](num_classes, layers, in_channels)


@functools.partial(jax.jit, static_argnums=0)
def _init(model: nn.Module, rng: jax.Array, x: jax.Array) -> dict:
    variables = model.init(rng, x, mode="eval")  # eval: no state, so the forward pass is compiled away
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def init(model: nn.Module, rng: jax.Array, images: jax.Array, *, timesteps: int) -> dict:
    """{"params", "batch_stats"} for a batch like ``images`` ([B, H, W, C] or [B, T, H, W, C])."""
    inputs.check_inputs(images, timesteps)
    return _init(model, rng, inputs.first_step(images)[None, :1])


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(x.size for x in jax.tree.leaves(params))
