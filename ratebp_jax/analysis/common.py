"""What the measurements share: layers in network order, a layer's subtree, one measured step.

Layers are named by their module path ("layer1_0/conv1") and listed in network
order: the order in which a forward pass calls them, not the alphabetical
order of the parameter tree.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax

from ratebp_jax import inputs, methods

SLTT_K_KEY = 0  # the key sltt_k's steps are drawn from in these measurements (the K drawn steps vary per seed)


def call_order(model: nn.Module, variables: dict, images: jax.Array, *, timesteps: int,
               kinds: tuple[type, ...]) -> list[str]:
    """Paths ("a/b") of the submodules of the given kinds, in the order the forward pass calls them.

    images: [B, H, W, C] or [B, T, H, W, C]. Traced abstractly
    (jax.eval_shape): nothing is computed.
    """
    order = []

    def record(next_fun, args, kwargs, context):
        path = "/".join(context.module.path)
        if context.method_name == "__call__" and isinstance(context.module, kinds) and path not in order:
            order.append(path)
        return next_fun(*args, **kwargs)

    x = inputs.time_major(images, timesteps)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, mode="eval"), variables, x)
    return order


def subtree(tree: dict, path: str) -> Any:
    """tree["a"]["b"] for path "a/b"."""
    return functools.reduce(lambda node, key: node[key], path.split("/"), tree)


def inference_variables(variables: dict) -> dict:
    """{"params", "batch_stats"} of variables (a run's may hold more collections)."""
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def measured_step(method: str, model: nn.Module, variables: dict, images: jax.Array, labels: jax.Array, *,
                  timesteps: int, k: int | None = None) -> methods.StepOutput:
    """methods.step_output of one training step; sltt_k draws its min(k, T) steps from key SLTT_K_KEY."""
    options = {}
    if method == "sltt_k":
        options = dict(rng=jax.random.key(SLTT_K_KEY), k=None if k is None else min(k, timesteps))
    return methods.step_output(method, model, variables, images, labels, timesteps=timesteps, **options)
