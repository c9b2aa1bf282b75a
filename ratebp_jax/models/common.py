"""Building blocks shared by the model zoo: layer factories, PyTorch-equivalent
initialisers and pooling over the last three axes ([..., H, W, C]).

Every model takes tensors with any number of leading axes ([T, B, H, W, C] in
multi-step modes, [B, H, W, C] otherwise) and passes ``mode`` to its LIF and
BatchNorm layers (see ratebp_jax.layers).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ratebp_jax import remat as remat_lib
from ratebp_jax.layers import LIF, BatchNorm, Conv, Dense
from ratebp_jax.neuron import LIFParams

Initializer = Callable[..., jax.Array]

# PyTorch's default for Conv2d/Linear weights, kaiming_uniform(a=√5): U(±1/√fan_in).
torch_default_kernel = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2/fan_out), untruncated.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias(fan_in: int) -> Initializer:
    """PyTorch's default bias of Conv2d/Linear: U(±1/√fan_in)."""
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class Layers:
    """How a model builds its layers: neuron settings, device axis and dtypes.

    dtype is the compute dtype; param_dtype the dtype of parameters and
    running statistics (float32, or float64 for exact comparisons). Every
    layer is called as layer(x, mode); conv and dense say whether their input
    comes from spiking neurons (spiking_input=False for the encoding layer
    on the image and for layers on real-valued sums), which OTTT's mode needs.
    """

    neuron: LIFParams = LIFParams()
    axis_name: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_form: str = "auto"  # how "bptt_remat" recomputes a block: ratebp_jax.remat.FORMS

    def __post_init__(self):
        remat_lib.check_form(self.remat_form)

    def block(self, parent: nn.Module, block: nn.Module | Callable, x: jax.Array, mode: str) -> jax.Array:
        """A block of the model parent applied to x: a child module of parent, called as
        block(x, mode), or a function block(module, x, mode) that creates its layers in
        module. In mode "bptt_remat" the backward pass recomputes the block's activations
        from x instead of storing them (recompute_in_backward). For a block that is a
        module, ratebp_jax.layers.remat(BlockClass) marks it the same way.
        """
        fn = (lambda module, x, mode: block.clone(parent=module)(x, mode)) if isinstance(block, nn.Module) else block
        if mode == "bptt_remat" and not parent.is_initializing():
            return recompute_in_backward(parent, fn, x, mode, self.remat_form)
        return block(x, mode) if isinstance(block, nn.Module) else block(parent, x, mode)

    def lif(self, name: str) -> LIF:
        return LIF(self.neuron, name=name)

    def bn(self, name: str) -> BatchNorm:
        return BatchNorm(axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def conv(self, features: int, kernel: int, *, in_features: int, stride: int = 1, padding: int | None = None,
             use_bias: bool, kernel_init: Initializer = torch_default_kernel,
             bias_init: Initializer | None = None, spiking_input: bool = True, name: str) -> Conv:
        """A kernel×kernel conv with PyTorch's padding (kernel // 2 by default) and initialisation."""
        pad = kernel // 2 if padding is None else padding
        return Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                    use_bias=use_bias, kernel_init=kernel_init,
                    bias_init=bias_init or torch_default_bias(in_features * kernel * kernel),
                    dtype=self.dtype, param_dtype=self.param_dtype, spiking_input=spiking_input,
                    trace_decay=self.neuron.decay, name=name)

    def dense(self, features: int, *, in_features: int, kernel_init: Initializer = torch_default_kernel,
              bias_init: Initializer | None = None, spiking_input: bool = True, name: str) -> Dense:
        """A linear layer with PyTorch's default initialisation unless told otherwise."""
        return Dense(features, kernel_init=kernel_init, bias_init=bias_init or torch_default_bias(in_features),
                     dtype=self.dtype, param_dtype=self.param_dtype, spiking_input=spiking_input,
                     trace_decay=self.neuron.decay, name=name)


class _Call(nn.Module):
    """fn(module, x, mode) as a module: the layers fn creates are its children, named as fn names them."""

    fn: Callable
    recomputes_in_backward = True  # a marked block (see ratebp_jax.contract)

    @nn.compact
    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        return self.fn(self, x, mode)


def recompute_in_backward(module: nn.Module, fn: Callable, x: jax.Array, mode: str, form: str = "auto") -> jax.Array:
    """fn(module, x, mode) -> y, where fn creates and calls layers of module: its values,
    gradients and running statistics, keeping only x and the variables of fn's layers for
    the backward pass, which recomputes fn's activations ("bptt_remat"; ratebp_jax.remat,
    whose ``form`` this is).

    The layers stay where fn puts them in module (their paths do not change). The
    recomputation is a function of the block's own variables (named by an abstract init),
    not nn.custom_vjp or nn.remat of module: those lift all of module's variables, and the
    running statistics that earlier blocks updated would leave them as escaped tracers.
    """
    block = _Call(fn)
    own = jax.eval_shape(lambda x: block.init(jax.random.key(0), x, mode), x)  # names of its variables
    variables = {c: {name: module.variables[c][name] for name in own[c]} for c in ("params", "batch_stats") if c in own}

    def block_fn(params, batch_stats, x):
        y, state = block.apply({"params": params, "batch_stats": batch_stats}, x, mode, mutable=["batch_stats"])
        return y, state.get("batch_stats", {})

    y, batch_stats = remat_lib.recompute(block_fn, variables.get("params", {}), variables.get("batch_stats", {}), x,
                                         form)
    for name, stats in batch_stats.items():
        module.put_variable("batch_stats", name, stats)
    return y


def check_channels(x: jax.Array, in_channels: int) -> None:
    """Raises ValueError unless x ([..., C]) has in_channels channels."""
    if x.shape[-1] != in_channels:
        raise ValueError(f"images have {x.shape[-1]} channels but the model was created with "
                         f"in_channels={in_channels} (input shape {x.shape})")


def _pool(x: jax.Array, init, op, window: int, stride: int, padding: int) -> jax.Array:
    """reduce_window over the H and W axes of [..., H, W, C] (a NumPy init keeps it differentiable)."""
    lead = (1,) * (x.ndim - 3)
    pads = ((0, 0),) * (x.ndim - 3) + ((padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, init, op, lead + (window, window, 1), lead + (stride, stride, 1), pads)


def avg_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """PyTorch AvgPool2d(window, stride=window) on [..., H, W, C]."""
    return _pool(x, np.array(0, x.dtype), jax.lax.add, window, window, 0) / (window * window)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """PyTorch MaxPool2d(window, stride, padding) on [..., H, W, C] (pads with -inf)."""
    return _pool(x, np.array(-np.inf, x.dtype), jax.lax.max, window, stride, padding)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [..., C]."""
    return jnp.mean(x, axis=(-3, -2))


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """PyTorch AdaptiveAvgPool2d((size, size)) on [..., H, W, C] -> [..., size, size, C].

    Output cell i averages input rows (and columns) floor(i·n/size) to
    ceil((i+1)·n/size) − 1; cells overlap when size does not divide n.
    """
    def cells(n):
        return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]

    rows = [jnp.mean(x[..., a:b, :, :], axis=-3) for a, b in cells(x.shape[-3])]
    x = jnp.stack(rows, axis=-3)
    cols = [jnp.mean(x[..., a:b, :], axis=-2) for a, b in cells(x.shape[-2])]
    return jnp.stack(cols, axis=-2)


def flatten(x: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [..., H·W·C] in NHWC order (PyTorch flattens C·H·W)."""
    return x.reshape(x.shape[:-3] + (-1,))
