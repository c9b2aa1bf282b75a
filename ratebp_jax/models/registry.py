"""The registry of architectures: the zoo (NAMES, INPUT_SHAPES), register, names, create and init.

A module of its own so that ``reference`` (weight conversion) can build a
model without importing the package that imports it.

A model of one's own becomes a name like the zoo's with
``register(name, builder, input_shape=(H, W, C))``, called when the module
that defines it is imported (for training runs: config.model_module).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ratebp_jax import inputs
from ratebp_jax.models.common import Layers
from ratebp_jax.models.imagenet_resnet import preact_resnet34, sew_resnet34
from ratebp_jax.models.mlp import mlp
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
    "mlp": mlp,  # the temporal tasks' (SPEC §8); widths and batch_norm from model_kwargs
}
NAMES = tuple(_BUILDERS)  # the zoo's; names() also lists the registered models

# The input each model was designed for: [H, W, C].
INPUT_SHAPES = {name: (32, 32, 3) for name in NAMES} | {
    "vggsnn_dvs": (48, 48, 2),
    "sew_resnet34": (224, 224, 3),
    "preact_resnet34": (224, 224, 3),
    "digits_vgg": (8, 8, 1),
    "mlp": (8, 8, 1),  # it flattens any [H, W, C]
}
_REGISTERED: dict[str, tuple[Callable[..., nn.Module], tuple[int, int, int]]] = {}  # name -> (builder, input shape)


def register(name: str, builder: Callable[..., nn.Module], *, input_shape: tuple[int, int, int]) -> None:
    """Makes ``name`` a model like the zoo's: create(name, ...), configs, every experiment.

    Args:
      name: not one of the zoo's NAMES; registering a name again replaces it
        (so that a notebook cell can run twice).
      builder: builder(num_classes, layers, in_channels, **model_kwargs) -> a
        flax Module called as model(x, mode=mode) on [..., H, W, C] (README,
        "Your own model"); layers is a models.common.Layers (neuron settings,
        device axis, dtypes), model_kwargs come from create (config.model_kwargs).
      input_shape: [H, W, C] of the input it was designed for (experiments
        that draw random inputs use it).
    """
    if not isinstance(name, str) or not name or name in _BUILDERS:
        raise ValueError(f"model name must be a new non-empty string, not one of the zoo's {NAMES}, got {name!r}")
    if not callable(builder):
        raise ValueError(f"builder of model {name!r} must be callable, got {builder!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"input_shape of model {name!r} must be [H, W, C] positive integers, got {input_shape!r}")
    _REGISTERED[name] = (builder, shape)


def names() -> tuple[str, ...]:
    """The zoo's NAMES and the registered models' names."""
    return NAMES + tuple(_REGISTERED)


def input_shape(name: str) -> tuple[int, int, int]:
    """[H, W, C] that model ``name`` was designed for."""
    _check_name(name)
    return INPUT_SHAPES[name] if name in INPUT_SHAPES else _REGISTERED[name][1]


def _check_name(name: str) -> None:
    if name not in _BUILDERS and name not in _REGISTERED:
        raise ValueError(f"model must be one of {names()}, got {name!r} (a model of one's own: models.register)")


def create(name: str, *, num_classes: int, in_channels: int = 3, dtype: Any = jnp.float32,
           axis_name: str | None = None, model_kwargs: dict | None = None, remat_form: str = "auto",
           **neuron_kwargs) -> nn.Module:
    """A model of names(): the zoo's NAMES or a registered one.

    Args:
      num_classes: size of the classifier output.
      in_channels: channels of the input images; checked when the model runs.
      dtype: compute dtype (float32, float64 or bfloat16). Parameters are
        float64 for float64, float32 otherwise.
      axis_name: device axis over which BatchNorm statistics are averaged
        (the pmap axis name, "batch" in the train step), or None.
      model_kwargs: keyword arguments of the model's builder (config.model_kwargs);
        of the zoo's, only mlp takes any (widths, batch_norm).
      remat_form: how bptt_remat recomputes the blocks (ratebp_jax.remat.FORMS).
      neuron_kwargs: LIFParams fields (decay, threshold, reset, detach_reset,
        surrogate, alpha).
    """
    _check_name(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
    dtype = jnp.dtype(dtype)
    layers = Layers(neuron=LIFParams(**neuron_kwargs), axis_name=axis_name, dtype=dtype,
                    param_dtype=jnp.float64 if dtype == jnp.float64 else jnp.float32, remat_form=remat_form)
    model_kwargs = dict(model_kwargs or {})
    builder = _BUILDERS[name] if name in _BUILDERS else _REGISTERED[name][0]
    try:
        inspect.signature(builder).bind(num_classes, layers, in_channels, **model_kwargs)
    except TypeError as error:
        raise ValueError(f"model_kwargs={model_kwargs!r} do not fit the builder of model {name!r}: {error}") from None
    return builder(num_classes, layers, in_channels, **model_kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _init(model: nn.Module, rng: jax.Array, x: jax.Array) -> dict:
    variables = model.init(rng, x, mode="eval")  # eval: no state, so the forward pass is compiled away
    return {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}


def init(model: nn.Module, rng: jax.Array, images: jax.Array, *, timesteps: int) -> dict:
    """{"params", "batch_stats"} for a batch like ``images`` ([B, H, W, C] or [B, T, H, W, C]);
    an empty dict for a collection the model does not have (no BatchNorm: no batch_stats)."""
    inputs.check_inputs(images, timesteps)
    return _init(model, rng, inputs.first_step(images)[None, :1])


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(x.size for x in jax.tree.leaves(params))
