"""A spiking MLP for the temporal tasks (SPEC §8), written as a user writes a model: the
public layers, a block marked with layers.remat, widths and BatchNorm from model_kwargs.

    model = create("mlp", num_classes=10, in_channels=1, model_kwargs={"widths": (128, 128), "batch_norm": False})

[..., H, W, C] -> flatten -> (Dense → BatchNorm → LIF) per width -> Dense -> [..., num_classes].
Weights and biases keep flax's initialisers (lecun normal, zeros); a hidden Dense has a bias only
without BatchNorm (whose mean subtraction would cancel it).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from ratebp_jax import layers
from ratebp_jax.models.common import Layers, check_channels, flatten


@layers.remat  # bptt_remat recomputes each hidden layer in the backward pass
class Hidden(nn.Module):
    """Dense → BatchNorm (when batch_norm) → LIF: [..., D] -> [..., features]."""

    features: int
    setting: Layers
    batch_norm: bool
    spiking_input: bool

    @nn.compact
    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        s = self.setting
        x = layers.Dense(self.features, use_bias=not self.batch_norm, spiking_input=self.spiking_input,
                         trace_decay=s.neuron.decay, dtype=s.dtype, param_dtype=s.param_dtype)(x, mode)
        if self.batch_norm:
            x = layers.BatchNorm(axis_name=s.axis_name, dtype=s.dtype, param_dtype=s.param_dtype)(x, mode)
        return layers.LIF(s.neuron)(x, mode)


class MLP(nn.Module):
    """[..., H, W, C] -> logits [..., num_classes]; the first layer reads the input as it comes
    (real values or spikes), the others read spikes."""

    num_classes: int
    setting: Layers
    in_channels: int = 1
    widths: Sequence[int] = (128, 128)
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, mode: str) -> jax.Array:
        check_channels(x, self.in_channels)
        s = self.setting
        x = flatten(x)
        for i, width in enumerate(self.widths):
            x = Hidden(width, s, self.batch_norm, spiking_input=i > 0, remat_form=s.remat_form, name=f"hidden{i}")(
                x, mode)
        return layers.Dense(self.num_classes, trace_decay=s.neuron.decay, dtype=s.dtype, param_dtype=s.param_dtype,
                            name="classifier")(x, mode)


def mlp(num_classes: int, setting: Layers, in_channels: int = 1, *, widths: Sequence[int] = (128, 128),
        batch_norm: bool = True) -> MLP:
    """The zoo's "mlp"; widths (hidden layer sizes, at least one) and batch_norm from config.model_kwargs."""
    widths = tuple(widths)
    if not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of positive integers, got {widths!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be True or False, got {batch_norm!r}")
    return MLP(num_classes, setting, in_channels, widths, batch_norm)
