"""Recomputing a block's activations in the backward pass ("bptt_remat", SPEC §3.4), as a pure function.

    recompute(block_fn, params, batch_stats, x, form="auto") -> (y, new_batch_stats)

block_fn(params, batch_stats, x) -> (y, new_batch_stats) is a block of a
model (usually a flax module's apply). The result has block_fn's values and
gradients, but the backward pass keeps only x, the parameters and the running
statistics of the block, and recomputes the block's activations from them.
Two forms compute it (FORMS):

  "checkpoint"  jax.checkpoint (what flax's nn.remat lifts): the standard form.
                XLA:GPU and XLA:TPU keep its optimisation barriers.
  "custom_vjp"  a jax.custom_vjp whose backward pass recomputes the block from
                x + 0·Σg, g the gradient of y. It exists for XLA:CPU, which drops
                jax.checkpoint's barriers: common-subexpression elimination merges
                the recomputation back into the forward pass, which then stores
                every activation (as much memory as bptt_m). No compiler can move a
                computation that reads g before g exists (README: the memory saved).
  "auto"        "custom_vjp" where the step is lowered for CPU, "checkpoint"
                elsewhere: chosen per lowering platform (jax.lax.platform_dependent),
                not by the default backend of the process, so that a step lowered
                for a GPU on a CPU host gets the GPU's form.

The form travels as an argument (a field of models.common.Layers and of the
blocks marked with layers.remat), never as module-level state, so that a
benchmark can compare them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

FORMS = ("auto", "custom_vjp", "checkpoint")

BlockFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]  # (params, batch_stats, x) -> (y, batch_stats)


def check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"remat_form must be one of {FORMS}, got {form!r}")


def recompute(block_fn: BlockFn, params: Any, batch_stats: Any, x: jax.Array, form: str = "auto") -> tuple[jax.Array, Any]:
    """block_fn(params, batch_stats, x), its activations recomputed in the backward pass.

    Args:
      block_fn: (params, batch_stats, x) -> (y, new batch_stats); any pytrees
        (empty dicts for a block without parameters or BatchNorm).
      params, batch_stats: the block's variables; batch_stats gets no gradient.
      x: [...] the block's input.
      form: one of FORMS (module docstring).
    Returns:
      (y, new batch_stats), equal to block_fn's, with the same gradients.
    """
    check_form(form)
    if form == "custom_vjp":
        return _recompute_custom(block_fn, params, batch_stats, x)
    if form == "checkpoint":
        return jax.checkpoint(block_fn)(params, batch_stats, x)
    return jax.lax.platform_dependent(params, batch_stats, x, cpu=functools.partial(_recompute_custom, block_fn),
                                      default=jax.checkpoint(block_fn))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recompute_custom(block_fn: BlockFn, params: Any, batch_stats: Any, x: jax.Array) -> tuple[jax.Array, Any]:
    return block_fn(params, batch_stats, x)


def _recompute_custom_fwd(block_fn, params, batch_stats, x):
    return block_fn(params, batch_stats, x), (params, batch_stats, x)


def _recompute_custom_bwd(block_fn, residuals, g):
    params, batch_stats, x = residuals
    y_grad = g[0]  # the new running statistics change no output: their cotangent is ignored
    tied = x + (0 * jnp.sum(y_grad)).astype(x.dtype)  # the recomputation cannot start before g exists
    _, vjp = jax.vjp(lambda params, x: block_fn(params, batch_stats, x)[0], params, tied)
    params_grad, x_grad = vjp(y_grad)
    return params_grad, None, x_grad


_recompute_custom.defvjp(_recompute_custom_fwd, _recompute_custom_bwd)
