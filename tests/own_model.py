"""Models of one's own, written as a user would, with ratebp_jax's public API only
(tests/test_own_model.py; the CLI tests import this module as config.model_module).

own_cnn: conv → BatchNorm → LIF (the encoder), marked residual blocks without
BatchNorm, a marked block without parameters (average pool → LIF), a dense head.
own_mlp: a dense layer on the flattened image first, no BatchNorm anywhere.
"""

import functools

import flax.linen as nn
import jax

from ratebp_jax import layers, models

# Padding of the 3×3 convs and of the second (dilated) conv of the residual block: flax's
# arguments, as a Flax user writes them.
SAME = dict(padding="SAME")
DILATED = dict(padding="SAME", kernel_dilation=2)


def conv(setting: models.Layers, features: int, **kwargs) -> layers.Conv:
    return layers.Conv(features, (3, 3), dtype=setting.dtype, param_dtype=setting.param_dtype,
                       trace_decay=setting.neuron.decay, **kwargs)


@layers.remat
class Residual(nn.Module):
    """[..., H, W, C] -> [..., H, W, C] spikes: LIF(x + conv(LIF(conv(x)))); no BatchNorm."""

    setting: models.Layers

    @nn.compact
    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        features = x.shape[-1]
        h = conv(self.setting, features, **SAME)(x, mode)
        h = layers.LIF(self.setting.neuron)(h, mode)
        h = conv(self.setting, features, **DILATED)(h, mode)
        return layers.LIF(self.setting.neuron)(h + x, mode)


@layers.remat
class SpikingPool(nn.Module):
    """[..., H, W, C] -> [..., H/2, W/2, C] spikes: 2×2 average pool → LIF; no parameters."""

    setting: models.Layers

    @nn.compact
    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        return layers.LIF(self.setting.neuron)(nn.avg_pool(x, (2, 2), (2, 2)), mode)


class OwnCNN(nn.Module):
    """[..., H, W, C] -> logits [..., num_classes]."""

    num_classes: int
    setting: models.Layers
    width: int = 8
    blocks: int = 1  # residual blocks

    @nn.compact
    def __call__(self, x: jax.Array, *, mode: str) -> jax.Array:
        s = self.setting
        x = conv(s, self.width, spiking_input=False, **SAME)(x, mode)  # reads the image: no trace for OTTT
        x = layers.BatchNorm(axis_name=s.axis_name, dtype=s.dtype, param_dtype=s.param_dtype)(x, mode)
        x = layers.LIF(s.neuron)(x, mode)
        for _ in range(self.blocks):
            x = Residual(s, remat_form=s.remat_form)(x, mode)  # follows models.create(remat_form=...)
        x = SpikingPool(s, remat_form=s.remat_form)(x, mode)
        x = x.reshape(x.shape[:-3] + (-1,))
        return layers.Dense(self.num_classes, dtype=s.dtype, param_dtype=s.param_dtype,
                            trace_decay=s.neuron.decay)(x, mode)


class OwnMLP(nn.Module):
    """[..., H, W, C] -> flatten -> dense -> LIF -> dense -> logits [..., num_classes]; no BatchNorm."""

    num_classes: int
    setting: models.Layers
    hidden: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, *, mode: str) -> jax.Array:
        s = self.setting
        dense = functools.partial(layers.Dense, dtype=s.dtype, param_dtype=s.param_dtype, trace_decay=s.neuron.decay)
        x = x.reshape(x.shape[:-3] + (-1,))
        x = layers.LIF(s.neuron)(dense(self.hidden, spiking_input=False)(x, mode), mode)
        return dense(self.num_classes)(x, mode)


def build_cnn(num_classes: int, setting: models.Layers, in_channels: int, *, width: int = 8,
              blocks: int = 1) -> OwnCNN:
    del in_channels  # any
    return OwnCNN(num_classes, setting, width, blocks)


def build_mlp(num_classes: int, setting: models.Layers, in_channels: int, *, hidden: int = 16) -> OwnMLP:
    del in_channels
    return OwnMLP(num_classes, setting, hidden)


models.register("own_cnn", build_cnn, input_shape=(8, 8, 1))
models.register("own_mlp", build_mlp, input_shape=(8, 8, 1))
