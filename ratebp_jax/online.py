"""Pieces of the step-by-step training methods (bptt_s, SLTT, OTTT; SPEC §2, §3.4) as pure functions.

A layer's weight gradient can be taken at another input than its forward
input (OTTT's presynaptic trace), and a convolution's gradients can be
computed in a form that XLA:CPU runs fast inside a loop body: autodiff's form
of them runs there up to ~40× slower than outside a loop (jax-ml/jax#12868:
resnet18 sltt at T = 2 took 114 s a step as a loop, 9 s unrolled). Time loops
with gradients inside are loops nonetheless, so that only one step's
activations are alive at a time: unrolled, XLA:CPU's scheduler keeps several
steps' activations alive (sltt's memory grew by 74% from T = 2 to 8).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

Layer = Callable[[Any, jax.Array], jax.Array]            # (params, x) -> y, affine in x
WeightGrad = Callable[[Any, jax.Array, jax.Array], Any]  # (params, input, output gradient) -> like params


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def custom_weight_grad(layer: Layer, weight_grad: WeightGrad, params: Any, x: jax.Array,
                       grad_input: jax.Array) -> jax.Array:
    """layer(params, x), whose parameters get weight_grad(params, grad_input, g) as their gradient.

    Args:
      layer: a layer as a pure function, affine in its input (conv, linear).
      weight_grad: the parameter gradient of layer at an input, for an output
        gradient g; autodiff_weight_grad(layer) is autodiff's.
      params: the layer's parameters.
      x: [B, ...] the layer's input.
      grad_input: like x, the input at which the parameter gradient is taken
        (x itself, or OTTT's presynaptic trace â_t); gets no gradient.
    Returns:
      layer(params, x); x gets the usual input gradient.
    """
    return layer(params, x)


def _custom_weight_grad_fwd(layer, weight_grad, params, x, grad_input):
    return layer(params, x), (params, x, grad_input)


def _custom_weight_grad_bwd(layer, weight_grad, residuals, g):
    params, x, grad_input = residuals
    _, input_vjp = jax.vjp(lambda x: layer(params, x), x)  # only the transpose is used: XLA drops the forward
    return weight_grad(params, grad_input, g), input_vjp(g)[0], jnp.zeros_like(grad_input)


custom_weight_grad.defvjp(_custom_weight_grad_fwd, _custom_weight_grad_bwd)


def autodiff_weight_grad(layer: Layer) -> WeightGrad:
    """(params, input, g) -> the parameter gradient autodiff gives layer(params, input) for g."""
    return lambda params, x, g: jax.vjp(lambda params: layer(params, x), params)[1](g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv(x: jax.Array, kernel: jax.Array, grad_input: jax.Array, strides: tuple[int, int],
         padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """A 2-D convolution (NHWC input, HWIO kernel, no dilation, one group) whose gradients
    are written as convolutions in XLA:CPU's native layouts, fast inside a loop body.

    Args:
      x: [B, H, W, C_in]; kernel: [kh, kw, C_in, C_out].
      grad_input: like x, the input at which the kernel gradient is taken (x
        itself, or OTTT's presynaptic trace â_t); gets no gradient.
      strides: (sh, sw); padding: ((top, bottom), (left, right)).
    Returns:
      [B, H_out, W_out, C_out], lax.conv_general_dilated's value. x gets its
      input gradient and kernel conv_kernel_grad(grad_input, g): with
      grad_input = x both equal autodiff's.
    """
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_fwd(x, kernel, grad_input, strides, padding):
    return conv(x, kernel, grad_input, strides, padding), (kernel, grad_input)


def _conv_bwd(strides, padding, residuals, g):
    kernel, grad_input = residuals
    dx = conv_input_grad(g, kernel, input_shape=grad_input.shape, strides=strides, padding=padding)
    dk = conv_kernel_grad(grad_input, g, kernel_size=kernel.shape[:2], strides=strides, padding=padding)
    return dx, dk.astype(kernel.dtype), jnp.zeros_like(grad_input)


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_input_grad(g: jax.Array, kernel: jax.Array, *, input_shape: Sequence[int], strides: Sequence[int],
                    padding: Sequence[tuple[int, int]]) -> jax.Array:
    """∂/∂x of Σ g · conv(x, kernel): g [B, H_out, W_out, C_out] -> [B, H, W, C_in].

    The transposed convolution, written as one convolution of g (dilated by
    the stride) with the flipped kernel in HWIO, XLA:CPU's native layout.
    """
    kh, kw = kernel.shape[:2]
    pads = []
    for size, k, s, (lo, hi), out in zip(input_shape[1:3], (kh, kw), strides, padding, g.shape[1:3]):
        rest = size + lo + hi - k - (out - 1) * s  # input rows the strided windows never reach
        pads.append((k - 1 - lo, k - 1 - hi + rest))
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # [kh, kw, C_out, C_in]
    return jax.lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=tuple(strides),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_kernel_grad(x: jax.Array, g: jax.Array, *, kernel_size: Sequence[int], strides: Sequence[int],
                     padding: Sequence[tuple[int, int]]) -> jax.Array:
    """∂/∂W of Σ g · conv(x, W) for a 2-D convolution in NHWC / HWIO (no dilation, one group).

    The kernel gradient of ``conv``.

    Args:
      x: [B, H, W, C_in] the convolution's input.
      g: [B, H_out, W_out, C_out] the gradient at its output.
      kernel_size, strides, padding: the convolution's (kh, kw), (sh, sw) and
        ((top, bottom), (left, right)).
    Returns:
      [kh, kw, C_in, C_out], equal to autodiff's kernel gradient. Written as
      one convolution in XLA:CPU's native layouts (the batch as the contracted
      feature axis, g as the kernel, dilated by the stride), which stays fast
      inside a loop body, where autodiff's form does not (module docstring).
    """
    (kh, kw), (sh, sw) = kernel_size, strides
    x = jnp.pad(x, ((0, 0), *padding, (0, 0))).transpose(3, 1, 2, 0)  # [C_in, H', W', B]
    out = jax.lax.conv_general_dilated(x, g.transpose(1, 2, 0, 3), (1, 1), "VALID", rhs_dilation=(sh, sw),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [C_in, ≥kh, ≥kw, C_out]
    return out[:, :kh, :kw].transpose(1, 2, 0, 3)
