"""The ImageNet ResNet-34s of the reference release (SPEC §5).

sew_resnet34: stem conv7×7/2 (bias) → BN → LIF → max-pool 3×3/2; block =
  conv → BN → LIF → conv → BN → LIF, then ADD the identity (or the
  downsample 1×1 conv/s → BN → LIF of the block input).
preact_resnet34: stem conv7×7/2 → BN → max-pool (no LIF); block = LIF →
  conv → BN → LIF → conv → BN, plus the identity (or 1×1 conv/s → BN of the
  block input); no LIF after the last block.
Both: stages 64, 128, 256, 512 × [3, 4, 6, 3], convs with bias, kaiming-normal
(fan_out) conv weights, global average pool → linear. In the rate pass the
max-pool acts on rates, as in the reference, so SPEC oracle 2 does not hold.
For OTTT (mode "ottt_step") a layer's presynaptic trace is that of its own
input: after sew_resnet34's stem, the trace of the max-pooled spikes (max
does not commute with the trace); preact_resnet34's downsample convs and
classifier read the real-valued residual stream, so they use the plain input.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from ratebp_jax.layers import remat
from ratebp_jax.models.common import Layers, check_channels, global_avg_pool, kaiming_normal_fan_out, max_pool

STAGE_FEATURES = (64, 128, 256, 512)
RESNET34_BLOCKS = (3, 4, 6, 3)


@remat  # bptt_remat recomputes each block
class ImageNetBlock(nn.Module):
    """[..., H, W, C_in] -> [..., H/stride, W/stride, features]; SEW or pre-activation."""

    features: int
    stride: int
    preact: bool
    layers: Layers

    def _conv(self, features, kernel, stride, in_features, name, spiking_input=True):
        return self.layers.conv(features, kernel, in_features=in_features, stride=stride, use_bias=True,
                                kernel_init=kaiming_normal_fan_out, spiking_input=spiking_input, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        L, in_features = self.layers, x.shape[-1]
        conv1 = self._conv(self.features, 3, self.stride, in_features, "conv1")
        conv2 = self._conv(self.features, 3, 1, self.features, "conv2")
        if self.preact:
            out = L.bn("bn1")(conv1(L.lif("spike1")(x, mode), mode), mode)
            out = L.bn("bn2")(conv2(L.lif("spike2")(out, mode), mode), mode)
        else:
            out = L.lif("spike1")(L.bn("bn1")(conv1(x, mode), mode), mode)
            out = L.lif("spike2")(L.bn("bn2")(conv2(out, mode), mode), mode)
        identity = x
        if self.stride != 1 or in_features != self.features:
            # SEW: x is a sum of spikes; pre-activation: the real-valued residual stream
            conv = self._conv(self.features, 1, self.stride, in_features, "downsample_conv", not self.preact)
            identity = L.bn("downsample_bn")(conv(x, mode), mode)
            if not self.preact:
                identity = L.lif("downsample_spike")(identity, mode)
        return out + identity


class ImageNetResNet(nn.Module):
    """[..., 224, 224, 3] (any size ≥ 32) -> logits [..., num_classes]."""

    stage_blocks: Sequence[int]
    preact: bool
    num_classes: int
    layers: Layers
    in_channels: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, *, mode: str) -> jax.Array:
        check_channels(x, self.in_channels)
        L = self.layers
        x = L.conv(64, 7, in_features=x.shape[-1], stride=2, padding=3, use_bias=True,
                   kernel_init=kaiming_normal_fan_out, spiking_input=False, name="conv1")(x, mode)
        x = L.bn("bn1")(x, mode)
        if not self.preact:
            x = L.lif("spike1")(x, mode)
        x = max_pool(x, 3, 2, 1)
        for stage, (features, blocks) in enumerate(zip(STAGE_FEATURES, self.stage_blocks)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = ImageNetBlock(features, stride, self.preact, L, remat_form=L.remat_form,
                                  name=f"layer{stage + 1}_{block}")(x, mode)
        return L.dense(self.num_classes, in_features=x.shape[-1], spiking_input=not self.preact,
                       name="fc")(global_avg_pool(x), mode)


def sew_resnet34(num_classes: int, layers: Layers, in_channels: int = 3) -> ImageNetResNet:
    return ImageNetResNet(RESNET34_BLOCKS, False, num_classes, layers, in_channels)


def preact_resnet34(num_classes: int, layers: Layers, in_channels: int = 3) -> ImageNetResNet:
    return ImageNetResNet(RESNET34_BLOCKS, True, num_classes, layers, in_channels)
