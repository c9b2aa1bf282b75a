"""The README's own model: a conv stem with BatchNorm, a residual block without BatchNorm that
bptt_remat recomputes, and a dense head, written only with the public API and registered as
"small_snn" (configs/digits_small_snn.py trains it with any method).

    python -m experiments.compare --config configs/digits_small_snn.py --methods all --seeds 0 --out DIR
"""

import flax.linen as nn

from ratebp_jax import layers, models


@layers.remat                                    # bptt_remat recomputes this block in the backward pass
class Residual(nn.Module):
    """LIF(x + conv(LIF(conv(x)))), no BatchNorm: [..., H, W, C] -> the same shape."""
    setting: models.Layers

    @nn.compact
    def __call__(self, x, mode):
        s, c = self.setting, x.shape[-1]
        conv = lambda **kw: layers.Conv(c, (3, 3), padding="SAME", dtype=s.dtype,   # flax's arguments
                                        param_dtype=s.param_dtype, trace_decay=s.neuron.decay, **kw)
        h = layers.LIF(s.neuron)(conv()(x, mode), mode)
        return layers.LIF(s.neuron)(x + conv(kernel_dilation=2)(h, mode), mode)


class SmallSNN(nn.Module):
    """[..., H, W, C] images -> [..., num_classes] logits."""
    num_classes: int
    setting: models.Layers
    width: int = 16

    @nn.compact
    def __call__(self, x, *, mode):
        s = self.setting
        x = layers.Conv(self.width, (3, 3), padding="SAME", spiking_input=False,  # reads the image
                        dtype=s.dtype, param_dtype=s.param_dtype)(x, mode)
        x = layers.BatchNorm(axis_name=s.axis_name, dtype=s.dtype, param_dtype=s.param_dtype)(x, mode)
        x = layers.LIF(s.neuron)(x, mode)
        x = Residual(s)(x, mode)
        x = nn.avg_pool(x, (2, 2), (2, 2))        # flax ops between layers are fine
        x = x.reshape(x.shape[:-3] + (-1,))
        return layers.Dense(self.num_classes, dtype=s.dtype, param_dtype=s.param_dtype,
                            trace_decay=s.neuron.decay)(x, mode)


def build(num_classes, setting, in_channels, *, width=16):
    return SmallSNN(num_classes, setting, width)


models.register("small_snn", build, input_shape=(8, 8, 1))   # now a name like the zoo's
