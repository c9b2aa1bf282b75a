"""What a model may contain, checked before anything is compiled (README, "Your own model").

    check_model(model, variables, images, method, timesteps)

traces the model abstractly (jax.eval_shape: no computation) in the mode the
method runs it in, sees every module call (flax's nn.intercept_methods), and
raises ModelError, one line naming the layer's path and its replacement, for:

  - flax.linen.BatchNorm, any method: it has no spike or rate pass, and its
    running statistics would be updated by passes that must not update them;
    ratebp_jax.layers.BatchNorm instead.
  - flax.linen.Dropout, any method: the spike pass and the rate pass (or the
    T steps of a step method) would draw different masks, so rate-based
    gradients would be those of another network.
  - flax's Conv / Dense (and their relatives) under ottt: OTTT takes every
    weight gradient from a presynaptic trace that only ratebp_jax.layers'
    Conv and Dense keep.
  - a ratebp_jax.layers.BatchNorm with axis_name None in a step that runs
    under the device axis "batch" (the pmap axis of ratebp_jax.train): its
    statistics would be those of one device's share of the batch.
  - under bptt_remat, a model that marks no block (layers.remat, or
    models.common.Layers.block): it would run as bptt_m, saving nothing.

ratebp_jax.layers.Conv and Dense subclass flax's and call flax's __call__;
they are recognised as ours.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from ratebp_jax import inputs, layers

DEVICE_AXIS = "batch"  # the pmap axis of ratebp_jax.train's steps (train.AXIS)

# The mode in which each method runs the model (the one traced here).
METHOD_MODES = {"bptt_m": "bptt", "bptt_remat": "bptt_remat", "rate_m": "spike", "bptt_s": "bptt_step",
                "rate_s": "spike_step", "sltt": "bptt_step", "sltt_k": "bptt_step", "ottt": "ottt_step"}
FLAX_LINEAR = (nn.Conv, nn.ConvTranspose, nn.ConvLocal, nn.Dense, nn.DenseGeneral, nn.Einsum)


class ModelError(ValueError):
    """A model contains a layer the training methods cannot run correctly."""


def layer_path(module: nn.Module) -> str:
    """The module's path in the model ("block1/conv"), or "the model itself" for the top module."""
    return "/".join(module.path) or f"the model itself ({type(module).__name__})"


def _axis_is_bound(name: str) -> bool:
    try:
        jax.lax.axis_size(name)
    except NameError:
        return False
    return True


def layer_problem(module: nn.Module, method: str, under_device_axis: bool) -> str | None:
    """Why ``module`` cannot run under ``method`` (one line naming its path and replacement), or None."""
    path = layer_path(module)
    if isinstance(module, nn.BatchNorm):
        return (f"layer {path} is flax.linen.BatchNorm, which has no spike or rate pass: use "
                "ratebp_jax.layers.BatchNorm(axis_name=layers.axis_name)(x, mode)")
    if isinstance(module, nn.Dropout):
        return (f"layer {path} is flax.linen.Dropout, which is refused: the passes of a training step would draw "
                "different masks; remove it (or use weight decay or data augmentation)")
    if method == "ottt" and isinstance(module, FLAX_LINEAR) and not isinstance(module, (layers.Conv, layers.Dense)):
        return (f"layer {path} is flax.linen.{type(module).__name__}, which keeps no presynaptic trace for ottt: use "
                f"ratebp_jax.layers.{'Dense' if isinstance(module, nn.Dense) else 'Conv'}(..., spiking_input=...)"
                "(x, mode)")
    if isinstance(module, layers.BatchNorm) and module.axis_name is None and under_device_axis:
        return (f"layer {path} is a BatchNorm without the device axis in a step run under pmap axis "
                f"{DEVICE_AXIS!r}: create it with axis_name=layers.axis_name (the builder's Layers)")
    return None


def check_model(model: nn.Module, variables: dict, images: jax.Array, method: str, timesteps: int) -> None:
    """Raises ModelError (module docstring) if model cannot run ``method`` on images like these.

    variables: {"params", "batch_stats"}; images: [B, H, W, C] or [B, T, H, W, C].
    Only shapes are used: nothing is computed or compiled.
    """
    mode = METHOD_MODES[method]
    under_device_axis = _axis_is_bound(DEVICE_AXIS)
    marked = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            problem = layer_problem(context.module, method, under_device_axis)
            if problem:
                raise ModelError(problem)
            if getattr(context.module, "recomputes_in_backward", False):
                marked.append(layer_path(context.module))
        return next_fun(*args, **kwargs)

    x = inputs.first_step(images) if mode in layers.STEP_MODES else inputs.time_major(images, timesteps)
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda variables, x: model.apply(variables, x, mode=mode, mutable=True), variables, x)
    if method == "bptt_remat" and not marked:
        raise ModelError(f"method bptt_remat recomputes the blocks marked with ratebp_jax.layers.remat(Block) "
                         f"(or models.common.Layers.block), and {type(model).__name__} marks none: mark its "
                         "blocks, or train with bptt_m")


def as_variables(variables: Any) -> dict:
    """{"params", "batch_stats"} of variables, an empty dict for a collection it lacks
    (a model without parameters or without BatchNorm)."""
    return {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}
