"""analysis.operation_counts: ACs, MACs and energy per layer, against counts by definition."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ratebp_jax import analysis, models
from ratebp_jax.analysis import opcount


class Tiny(nn.Module):
    """Four layers: three read the input x [T, B, 5, 5, 2], one the real-valued output of another."""

    @nn.compact
    def __call__(self, x, *, mode):
        strided = nn.Conv(3, (3, 3), strides=2, padding=((1, 1), (1, 1)), name="strided")(x)  # [.., 3, 3, 3]
        grouped = nn.Conv(4, (2, 2), padding=((0, 1), (1, 0)), feature_group_count=2, name="grouped")(x)
        on_real = nn.Conv(2, (1, 1), name="on_real")(strided)
        return nn.Dense(2, name="classifier")(x.reshape(x.shape[:2] + (-1,))), grouped, on_real


# (kernel, stride, padding (top, bottom), (left, right), feature groups, features) of Tiny's convs.
CONVS = {"strided": ((3, 3), 2, ((1, 1), (1, 1)), 1, 3), "grouped": ((2, 2), 1, ((0, 1), (1, 0)), 2, 4),
         "on_real": ((1, 1), 1, ((0, 0), (0, 0)), 1, 2)}


@pytest.fixture(scope="module")
def tiny():
    """Tiny and its variables, set by hand (Flax's eager init takes seconds)."""
    rng = np.random.default_rng(1)
    shapes = {"strided": (3, 3, 2, 3), "grouped": (2, 2, 1, 4), "on_real": (1, 1, 3, 2), "classifier": (50, 2)}
    params = {name: {"kernel": rng.normal(size=shape), "bias": np.zeros(shape[-1])} for name, shape in shapes.items()}
    return Tiny(), {"params": params, "batch_stats": {}}


def loop_count(x, kernel, stride, pads, groups, features):
    """Per example, by definition: for each output element, the nonzero inputs in its receptive field.
    x: [T, B, H, W, C]."""
    steps, batch, height, width, channels = x.shape
    (kh, kw), ((top, bottom), (left, right)) = kernel, pads
    out_h, out_w = (height + top + bottom - kh) // stride + 1, (width + left + right - kw) // stride + 1
    per_group = channels // groups
    total = 0
    for t, b, oy, ox, o in itertools.product(range(steps), range(batch), range(out_h), range(out_w),
                                             range(features)):
        g = o // (features // groups)
        for ky, kx in itertools.product(range(kh), range(kw)):
            iy, ix = oy * stride - top + ky, ox * stride - left + kx
            if 0 <= iy < height and 0 <= ix < width:
                total += np.count_nonzero(x[t, b, iy, ix, g * per_group:(g + 1) * per_group])
    return total / batch


def by_layer(rows):
    return {row["layer"]: row for row in rows}


def hand_set_spikes():
    """[B=2, T=2, 5, 5, 2]: corners, an edge and an interior spike, then a random step."""
    spikes = np.zeros((2, 2, 5, 5, 2))
    spikes[0, 0, 0, 0, 0] = spikes[0, 0, 1, 1, 1] = spikes[0, 1, 4, 4, 1] = 1  # example 0: by hand below
    spikes[1, 0, 4, 2, 0] = 1                                                   # bottom edge
    spikes[1, 1] = np.random.default_rng(0).random((5, 5, 2)) < 0.4
    return spikes


def test_counts_by_hand_at_borders_with_padding_and_stride_two(tiny):
    """Example 0 alone: spikes at (0, 0) ch 0 and (1, 1) ch 1 at t = 1, (4, 4) ch 1 at t = 2."""
    rows = by_layer(analysis.operation_counts(*tiny, hand_set_spikes()[:1], timesteps=2))
    assert list(rows) == ["strided", "grouped", "on_real", "classifier"]
    # strided (3×3, stride 2, padding 1, 5×5 -> 3×3): input row/col i lies in the windows of
    # outputs {0}, {0, 1}, {1}, {1, 2}, {2} for i = 0..4; so 1 + 2·2 + 1 windows, × 3 features.
    assert rows["strided"]["acs"] == (1 + 4 + 1) * 3
    # grouped (2×2, padding top 0 / bottom 1, left 1 / right 0, 2 groups of 2 features): input row i
    # lies in 1 window for i = 0, else 2; column j in 2 windows for j < 4, 1 for j = 4; each spike
    # reaches only its channel's group, 2 features.
    assert rows["grouped"]["acs"] == (1 * 2 + 2 * 2 + 2 * 1) * 2
    assert rows["classifier"]["acs"] == 3 * 2
    assert rows["strided"]["macs"] == 0 and rows["strided"]["input_rate"] == 3 / (2 * 50)


def test_counts_equal_a_numpy_loop(tiny):
    spikes = hand_set_spikes()
    rows = by_layer(analysis.operation_counts(*tiny, spikes, timesteps=2))
    x = np.moveaxis(spikes, 1, 0)  # time-major, as the model sees it
    for name in ("strided", "grouped"):
        assert rows[name]["acs"] == loop_count(x, *CONVS[name]) and rows[name]["macs"] == 0
        assert rows[name]["ann_macs_padding_free"] == loop_count(np.ones((1, 1, 5, 5, 2)), *CONVS[name])
    # the usual count: every output element × its kernel's inputs, the padded border included
    assert rows["strided"]["ann_macs"] == 3 * 3 * 3 * (3 * 3 * 2) and rows["grouped"]["ann_macs"] == 5 * 5 * 4 * (2 * 2)
    assert rows["classifier"]["acs"] == np.count_nonzero(x) * 2 / 2 and rows["classifier"]["ann_macs"] == 50 * 2
    # on_real reads the strided conv's real-valued output: MACs, one per nonzero input and synapse.
    model, variables = tiny
    strided = nn.Conv(3, (3, 3), strides=2, padding=((1, 1), (1, 1)))
    real = np.asarray(strided.apply({"params": variables["params"]["strided"]}, x))
    assert rows["on_real"]["acs"] == 0 and rows["on_real"]["macs"] == loop_count(real, *CONVS["on_real"]) > 0
    assert rows["on_real"]["ann_macs"] == 3 * 3 * 3 * 2


def test_no_spikes_no_accumulates_and_all_spikes_t_times_the_ann(tiny):
    zeros = analysis.operation_counts(*tiny, np.zeros((2, 5, 5, 2)), timesteps=3)
    assert all(row["acs"] == row["macs"] == row["energy_pj"] == row["input_rate"] == 0 for row in zeros)
    assert all(row["ann_macs"] > 0 for row in zeros)
    ones = by_layer(analysis.operation_counts(*tiny, np.ones((2, 5, 5, 2)), timesteps=3))
    for name in ("strided", "grouped", "classifier"):
        assert ones[name]["acs"] == 3 * ones[name]["ann_macs_padding_free"] and ones[name]["input_rate"] == 1
        assert ones[name]["literature_ops"] == 3 * ones[name]["ann_macs"]


def conv_macs(n, kernel, stride, padding, c_in, c_out):
    """(MACs, output size) of a square conv on n×n, padded positions excluded: the kernel taps that land
    inside the input, per axis, squared, × C_in × C_out."""
    out = (n + 2 * padding - kernel) // stride + 1
    taps = sum(0 <= o * stride - padding + k < n for o in range(out) for k in range(kernel))
    return taps ** 2 * c_in * c_out, out


def resnet18_macs(n=32, classes=10):
    """SPEC §5: stem 3→64; stages 64, 128, 256, 512 × 2 BasicBlocks; 1×1 shortcut convs; linear."""
    total, n = conv_macs(n, 3, 1, 1, 3, 64)
    c_in = 64
    for stage, features in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            conv1, out = conv_macs(n, 3, stride, 1, c_in, features)
            conv2, _ = conv_macs(out, 3, 1, 1, features, features)
            shortcut = conv_macs(n, 1, stride, 0, c_in, features)[0] if stride != 1 or c_in != features else 0
            total, n, c_in = total + conv1 + conv2 + shortcut, out, features
    return total + 512 * classes


def test_resnet18_ann_macs_match_the_architecture():
    model = models.create("resnet18", num_classes=10)
    images = jnp.ones((1, 32, 32, 3))
    shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0), images, timesteps=1))
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # the counts need no weights
    rows = analysis.operation_counts(model, variables, images, timesteps=1)
    # the usual figure (thop/ptflops/syops, SNN papers) counts the padded border; ours without it too
    assert len(rows) == 21 and sum(row["ann_macs"] for row in rows) == 555_422_720
    assert sum(row["ann_macs_padding_free"] for row in rows) == resnet18_macs() == 481_859_328
    assert rows[0]["layer"] == "conv0" and rows[0]["ann_macs"] == 32 * 32 * 64 * (3 * 3 * 3)
    assert rows[0]["ann_macs_padding_free"] == (3 * 32 - 2) ** 2 * 3 * 64


def test_energy_is_counts_times_constants_and_each_constant_its_own_term(tiny):
    spikes = hand_set_spikes()
    base = analysis.operation_counts(*tiny, spikes, timesteps=2)
    assert sum(r["acs"] for r in base) > 0 and sum(r["macs"] for r in base) > 0
    for row in base:
        assert row["energy_pj"] == pytest.approx(row["acs"] * 0.9 + row["macs"] * 4.6, rel=1e-12)
        assert row["ann_energy_pj"] == pytest.approx(row["ann_macs"] * 4.6, rel=1e-12)
        assert row["literature_ops"] == pytest.approx(row["input_rate"] * row["ann_macs"] * 2, rel=1e-12)
        e = 4.6 if row["macs"] else 0.9  # spikes in: ACs; real values in: MACs, as the exact counts
        assert row["literature_energy_pj"] == pytest.approx(row["literature_ops"] * e, rel=1e-12)
    assert (opcount.E_AC_PJ, opcount.E_MAC_PJ) == (0.9, 4.6)
    dearer_ac = analysis.operation_counts(*tiny, spikes, timesteps=2, e_ac_pj=2.0)
    dearer_mac = analysis.operation_counts(*tiny, spikes, timesteps=2, e_mac_pj=10.0)
    counts = ("layer", "input_rate", "acs", "macs", "ann_macs")
    for row, ac, mac in zip(base, dearer_ac, dearer_mac):
        assert [row[k] for k in counts] == [ac[k] for k in counts] == [mac[k] for k in counts]
        assert ac["energy_pj"] - row["energy_pj"] == pytest.approx(row["acs"] * 1.1, rel=1e-9, abs=1e-9)
        assert ac["ann_energy_pj"] == row["ann_energy_pj"]
        assert mac["energy_pj"] - row["energy_pj"] == pytest.approx(row["macs"] * 5.4, rel=1e-9, abs=1e-9)
        assert mac["ann_energy_pj"] - row["ann_energy_pj"] == pytest.approx(row["ann_macs"] * 5.4, rel=1e-9)

