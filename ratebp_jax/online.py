"""Pieces of the step-by-step training methods (bptt_s, SLTT, OTTT; SPEC §2, §3.4) as pure functions.

A layer's weight gradient can be taken at another input than its forward
input (OTTT's presynaptic trace), and a convolution's gradients can be
computed in a form that XLA:CPU runs fast inside a loop body: autodiff's form
of them runs there many times slower than outside a loop (jax-ml/jax#12868;
the README has the measured figures). That form
is used where the computation is lowered for the CPU, autodiff's elsewhere
(CONV_GRADIENTS). Time loops with gradients inside are loops nonetheless, so
that only one step's activations are alive at a time: unrolled, XLA:CPU's
scheduler keeps several steps' activations alive (sltt's memory then grows
with T).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

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


# How a convolution's gradients are written (Conv's conv_gradients, conv's gradients):
#   "native_layouts"  as convolutions in XLA:CPU's native layouts (conv_input_grad,
#                     conv_kernel_grad): XLA:CPU runs autodiff's form of them many times
#                     slower inside a loop body (jax-ml/jax#12868), these stay fast there.
#   "autodiff"        autodiff's own form (the transpose rules of lax.conv_general_dilated):
#                     what XLA:GPU and XLA:TPU map to their backward-convolution kernels,
#                     which they may not recognise in the hand-written form.
#   "auto"            "native_layouts" where the computation is lowered for the CPU,
#                     "autodiff" elsewhere (jax.lax.platform_dependent: the lowering
#                     platform decides, not the process's default backend).
# The numbers are the same in all three (up to float rounding). bptt_s, whose time loop is
# written out, runs the same step modes and so gets the same choice: on XLA:CPU the native
# layouts (its step time against bptt_m's is in the README).
CONV_GRADIENTS = ("auto", "native_layouts", "autodiff")


class _ConvArgs(NamedTuple):  # hashable: a nondiff argument of the custom_vjp
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    kernel_dilation: tuple[int, ...]
    feature_group_count: int
    precision: Any
    gradients: str


def channels_last(num_spatial: int) -> jax.lax.ConvDimensionNumbers:
    """Flax's layout for num_spatial spatial axes: input and output [N, *spatial, C], kernel [*spatial, I, O]."""
    spatial = tuple(range(1, num_spatial + 1))
    return jax.lax.ConvDimensionNumbers(lhs_spec=(0, num_spatial + 1, *spatial),
                                        rhs_spec=(num_spatial + 1, num_spatial, *range(num_spatial)),
                                        out_spec=(0, num_spatial + 1, *spatial))


def conv(x: jax.Array, kernel: jax.Array, grad_input: jax.Array, *, strides: Sequence[int],
         padding: str | Sequence[tuple[int, int]], kernel_dilation: Sequence[int] | None = None,
         feature_group_count: int = 1, precision: Any = None, gradients: str = "auto") -> jax.Array:
    """A channels-last convolution (flax's layout, any number of spatial axes) whose kernel
    gradient is taken at grad_input, its gradients written in the form ``gradients`` names.

    Args:
      x: [B, *spatial, C_in]; kernel: [*window, C_in // feature_group_count, C_out].
      grad_input: like x, the input at which the kernel gradient is taken (x
        itself, or OTTT's presynaptic trace â_t); gets no gradient.
      strides, kernel_dilation: one integer per spatial axis (dilation default 1).
      padding: "SAME", "SAME_LOWER", "VALID" or one (low, high) pair per spatial axis.
      feature_group_count, precision: as lax.conv_general_dilated's.
      gradients: "auto", "native_layouts" or "autodiff" (CONV_GRADIENTS above).
    Returns:
      [B, *spatial_out, C_out], lax.conv_general_dilated's value. x gets its
      input gradient and kernel the kernel gradient at grad_input: with
      grad_input = x both equal autodiff's.
    """
    if gradients not in CONV_GRADIENTS:
        raise ValueError(f"gradients must be one of {CONV_GRADIENTS}, got {gradients!r}")
    num_spatial = kernel.ndim - 2
    dilation = (1,) * num_spatial if kernel_dilation is None else tuple(kernel_dilation)
    if isinstance(padding, str):
        span = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:num_spatial], dilation)]
        padding = jax.lax.padtype_to_pads(x.shape[1:-1], span, strides, padding)
    args = _ConvArgs(tuple(strides), tuple((int(lo), int(hi)) for lo, hi in padding), dilation,
                     feature_group_count, precision, gradients)
    return _conv(x, kernel, jnp.asarray(grad_input, x.dtype), args)


def _conv_value(x, kernel, args: _ConvArgs):
    return jax.lax.conv_general_dilated(x, kernel, args.strides, args.padding, rhs_dilation=args.kernel_dilation,
                                        dimension_numbers=channels_last(kernel.ndim - 2),
                                        feature_group_count=args.feature_group_count, precision=args.precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv(x, kernel, grad_input, args):
    return _conv_value(x, kernel, args)


def _conv_fwd(x, kernel, grad_input, args):
    return _conv_value(x, kernel, args), (kernel, grad_input)


def _conv_bwd(args, residuals, g):
    kernel, grad_input = residuals

    def native_layouts(kernel, grad_input, g):
        shared = dict(strides=args.strides, padding=args.padding, kernel_dilation=args.kernel_dilation,
                      feature_group_count=args.feature_group_count, precision=args.precision)
        dx = conv_input_grad(g, kernel, input_shape=grad_input.shape, **shared)
        dk = conv_kernel_grad(grad_input, g, kernel_size=kernel.shape[:-2], **shared)
        return dx.astype(grad_input.dtype), dk.astype(kernel.dtype)

    def autodiff(kernel, grad_input, g):
        # the input gradient of a linear map is the same at every input: taken at grad_input too
        return jax.vjp(lambda x, kernel: _conv_value(x, kernel, args), grad_input, kernel)[1](g)

    if args.gradients == "auto":  # chosen when lowering; the compiler sees one form only
        dx, dk = jax.lax.platform_dependent(kernel, grad_input, g, cpu=native_layouts, default=autodiff)
    else:
        dx, dk = {"native_layouts": native_layouts, "autodiff": autodiff}[args.gradients](kernel, grad_input, g)
    return dx, dk, jnp.zeros_like(grad_input)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_input_grad(g: jax.Array, kernel: jax.Array, *, input_shape: Sequence[int], strides: Sequence[int],
                    padding: Sequence[tuple[int, int]], kernel_dilation: Sequence[int],
                    feature_group_count: int = 1, precision: Any = None) -> jax.Array:
    """∂/∂x of Σ g · conv(x, kernel): g [B, *spatial_out, C_out] -> [B, *spatial, C_in].

    The transposed convolution, written as one convolution of g (dilated by
    the stride) with the flipped kernel in XLA:CPU's native layout ([*window,
    I, O], per group: the kernel's output channels as I, its input channels
    as O). padding: one explicit (low, high) pair per spatial axis.
    """
    num_spatial = kernel.ndim - 2
    *window, in_per_group, out_features = kernel.shape
    pads = []
    for size, k, s, d, (lo, hi), out in zip(input_shape[1:-1], window, strides, kernel_dilation, padding,
                                            g.shape[1:-1]):
        span = (k - 1) * d + 1
        rest = size + lo + hi - span - (out - 1) * s  # input rows the strided windows never reach
        pads.append((span - 1 - lo, span - 1 - hi + rest))
    groups = feature_group_count
    flipped = kernel[(slice(None, None, -1),) * num_spatial]
    if groups > 1:  # group i's output channels as I, its input channels as O block i
        flipped = flipped.reshape(*window, in_per_group, groups, out_features // groups).swapaxes(-3, -1)
        flipped = flipped.reshape(*window, out_features // groups, groups * in_per_group)
    else:
        flipped = flipped.swapaxes(-2, -1)  # [*window, C_out / G, C_in]
    return jax.lax.conv_general_dilated(g, flipped, (1,) * num_spatial, pads, lhs_dilation=tuple(strides),
                                        rhs_dilation=tuple(kernel_dilation),
                                        dimension_numbers=channels_last(num_spatial),
                                        feature_group_count=groups, precision=precision)


def conv_kernel_grad(x: jax.Array, g: jax.Array, *, kernel_size: Sequence[int], strides: Sequence[int],
                     padding: Sequence[tuple[int, int]], kernel_dilation: Sequence[int],
                     feature_group_count: int = 1, precision: Any = None) -> jax.Array:
    """∂/∂W of Σ g · conv(x, W) for a channels-last convolution (the kernel gradient of ``conv``).

    Args:
      x: [B, *spatial, C_in] the convolution's input.
      g: [B, *spatial_out, C_out] the gradient at its output.
      kernel_size, strides, kernel_dilation: the convolution's, one integer
        per spatial axis; padding: one explicit (low, high) pair per axis.
      feature_group_count, precision: the convolution's.
    Returns:
      [*kernel_size, C_in // feature_group_count, C_out], equal to autodiff's
      kernel gradient. Written as one convolution in XLA:CPU's native layouts
      (the batch as the contracted feature axis, per group; g as the kernel,
      dilated by the stride; the kernel dilation as the window stride), which
      stays fast inside a loop body, where autodiff's form does not (CONV_GRADIENTS).
    """
    num_spatial, groups = len(kernel_size), feature_group_count
    batch, in_features = x.shape[0], x.shape[-1]
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)])
    spatial = x.shape[1:-1]
    if groups > 1:  # group i's channels as batch entries i·B .. (i+1)·B - 1
        x = jnp.moveaxis(x.reshape(batch, *spatial, groups, in_features // groups), -2, 0)
        x = x.reshape(groups * batch, *spatial, in_features // groups)
    x = x.transpose(num_spatial + 1, *range(1, num_spatial + 1), 0)  # [C_in / G, *spatial, G·B]
    g = g.transpose(*range(1, num_spatial + 1), 0, num_spatial + 1)  # [*spatial_out, B, C_out]
    out = jax.lax.conv_general_dilated(x, g, tuple(kernel_dilation), "VALID", rhs_dilation=tuple(strides),
                                       dimension_numbers=channels_last(num_spatial), feature_group_count=groups,
                                       precision=precision)  # [C_in/G, ≥kernel_size, C_out]
    out = out[(slice(None), *(slice(k) for k in kernel_size))]
    return jnp.moveaxis(out, 0, num_spatial)
