"""CIFAR spiking ResNets of the reference release: resnet18 and resnet19 (SPEC §5).

stem = conv3×3 → BN → LIF (no max-pool); BasicBlock = conv → BN → LIF →
conv → BN, plus the shortcut (identity or 1×1 conv stride s → BN), → LIF;
global average pool → classifier. Convs have no bias; weights use PyTorch's
default initialisation, as the reference does.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from ratebp_jax.layers import remat
from ratebp_jax.models.common import Layers, check_channels, global_avg_pool


@remat  # bptt_remat recomputes each block
class BasicBlock(nn.Module):
    """[..., H, W, C_in] -> [..., H/stride, W/stride, features] spikes."""

    features: int
    stride: int
    layers: Layers

    @nn.compact
    def __call__(self, x: jax.Array, mode: str) -> jax.Array:
        L, in_features = self.layers, x.shape[-1]
        out = L.conv(self.features, 3, in_features=in_features, stride=self.stride, use_bias=False, name="conv1")(x, mode)
        out = L.lif("spike1")(L.bn("bn1")(out, mode), mode)
        out = L.conv(self.features, 3, in_features=self.features, use_bias=False, name="conv2")(out, mode)
        out = L.bn("bn2")(out, mode)
        shortcut = x
        if self.stride != 1 or in_features != self.features:
            shortcut = L.conv(self.features, 1, in_features=in_features, stride=self.stride, use_bias=False,
                              name="shortcut_conv")(x, mode)
            shortcut = L.bn("shortcut_bn")(shortcut, mode)
        return L.lif("spike2")(out + shortcut, mode)


class ResNet(nn.Module):
    """Spiking ResNet for 32×32 inputs: [..., H, W, C] -> logits [..., num_classes].

    stage_features/stage_blocks: widths and block counts of the stages (the
    first stage has stride 1, the others 2). hidden_features: if set, the
    classifier is linear → LIF → linear with that many hidden units (resnet19).
    """

    stage_features: Sequence[int]
    stage_blocks: Sequence[int]
    num_classes: int
    layers: Layers
    in_channels: int = 3
    hidden_features: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, mode: str) -> jax.Array:
        check_channels(x, self.in_channels)
        L, stem_features = self.layers, self.stage_features[0]
        x = L.conv(stem_features, 3, in_features=x.shape[-1], use_bias=False, spiking_input=False, name="conv0")(x, mode)
        x = L.lif("spike0")(L.bn("bn0")(x, mode), mode)
        for stage, (features, blocks) in enumerate(zip(self.stage_features, self.stage_blocks)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features, stride, L, remat_form=L.remat_form, name=f"layer{stage + 1}_{block}")(x, mode)
        x = global_avg_pool(x)
        if self.hidden_features:
            x = L.dense(self.hidden_features, in_features=x.shape[-1], name="fc1")(x, mode)
            x = L.lif("spike_fc1")(x, mode)
        return L.dense(self.num_classes, in_features=x.shape[-1], name="classifier")(x, mode)


def resnet18(num_classes: int, layers: Layers, in_channels: int = 3) -> ResNet:
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, layers, in_channels)


def resnet19(num_classes: int, layers: Layers, in_channels: int = 3) -> ResNet:
    return ResNet((128, 256, 512), (3, 3, 2), num_classes, layers, in_channels, hidden_features=256)
