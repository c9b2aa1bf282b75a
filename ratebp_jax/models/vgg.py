"""Spiking VGGs of the reference release (SPEC §5), and a small one for digits.

A feature config lists conv widths (each conv3×3 with bias → BN → LIF) and
pools: "A" 2×2 average pool, "AA" global average pool, "AA3" PyTorch's
AdaptiveAvgPool2d((3, 3)). The flattened features go through the classifier
linear. Weights are initialised
N(0, 0.5²) and biases 0, as in the reference.
"""

from __future__ import annotations

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
            x = L.conv(item, 3, in_features=x.shape[-1], use_bias=True, kernel_init=vgg_init, bias_init=zeros,
                       name=f"conv{convs}")(x)
            x = L.lif(f"spike{convs}")(L.bn(f"bn{convs}")(x, mode), mode)
            convs += 1
        if self.features[-1] != "AA":  # still [..., H, W, C]
            x = flatten(x)
        return L.dense(self.num_classes, in_features=x.shape[-1], kernel_init=vgg_init, bias_init=zeros,
                       name="classifier")(x)


def vgg(name: str):
    def build(num_classes: int, layers: Layers, in_channels: int = 3) -> VGG:
        return VGG(FEATURES[name], num_classes, layers, in_channels)
    build.__name__ = name
    return build
