"""Spiking VGGs of the reference release (SPEC §5), and a small one for digits.

A feature config lists conv widths (each conv3×3 with bias → BN → LIF) and
pools: "A" 2×2 average pool, "AA" global average pool, "AA3" PyTorch's
AdaptiveAvgPool2d((3, 3)). The flattened features go through the classifier
linear. Weights are initialised
N(0, 0.5²) and biases 0, as in the reference.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax

from ratebp_jax.models.common import Layers, adaptive_avg_pool, check_channels, avg_pool, flatten, global_avg_pool

FEATURES = {
    "vgg11": (64, "A", 128, 256, "A", 512, 512, "A", 512, "A", 512, 512, "AA"),
    "vgg13": (64, 64, "A", 128, 128, "A", 256, 256, "A", 512, 512, 512, "A", 512, "AA"),
    "vggsnn_cifar": (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "AA3"),
    "vggsnn_dvs": (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A"),
    # Ours, for the 8×8 digits default: trains in seconds per epoch on a CPU.
    "digits_vgg": (32, 64, "A", 128, "AA"),
}
POOLS = {"A": avg_pool, "AA": global_avg_pool, "AA3": lambda x: adaptive_avg_pool(x, 3)}

vgg_init = nn.initializers.normal(stddev=0.5)


def conv_bn_lif(module: nn.Module, x: jax.Array, mode: str, *, layers: Layers, features: int,
                index: int) -> jax.Array:
    """conv{index} → bn{index} → spike{index}, layers of ``module`` (a block, Layers.block):
    [..., H, W, C] -> [..., H, W, features]. The first conv reads the image."""
    L = layers
    x = L.conv(features, 3, in_features=x.shape[-1], use_bias=True, kernel_init=vgg_init,
               bias_init=nn.initializers.zeros, spiking_input=index > 0, name=f"conv{index}")(x, mode)
    return L.lif(f"spike{index}")(L.bn(f"bn{index}")(x, mode), mode)


class VGG(nn.Module):
    """[..., H, W, C] -> logits [..., num_classes]; features: a config of FEATURES."""

    features: Sequence[int | str]
    num_classes: int
    layers: Layers
    in_channels: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, *, mode: str) -> jax.Array:
        check_channels(x, self.in_channels)
        L, zeros = self.layers, nn.initializers.zeros
        convs = 0
        for item in self.features:
            if isinstance(item, str):
                x = POOLS[item](x)
                continue
            x = L.block(self, functools.partial(conv_bn_lif, layers=L, features=item, index=convs), x, mode)
            convs += 1
        if self.features[-1] != "AA":  # still [..., H, W, C]
            x = flatten(x)
        return L.dense(self.num_classes, in_features=x.shape[-1], kernel_init=vgg_init, bias_init=zeros,
                       name="classifier")(x, mode)


def vgg(name: str):
    def build(num_classes: int, layers: Layers, in_channels: int = 3) -> VGG:
        return VGG(FEATURES[name], num_classes, layers, in_channels)
    build.__name__ = name
    return build
