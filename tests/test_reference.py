"""Import/export of the authors' PyTorch weights (ratebp_jax.models.reference).

The reference keys and shapes (tests/data/reference_keys/NAME.txt) were
listed from the authors' release; the numerical checks run the state_dict
arrays through a NumPy forward pass written in PyTorch's NCHW layout.
"""

import ast
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import ratebp_jax as rbp
from ratebp_jax import models
from ratebp_jax.models.reference import REFERENCE_NAMES

KEYS_DIR = Path(__file__).parent / "data" / "reference_keys"


@functools.cache
def reference_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """PyTorch key -> shape, as listed in tests/data/reference_keys/NAME.txt."""
    lines = (KEYS_DIR / f"{name}.txt").read_text().splitlines()
    return {key: ast.literal_eval(shape) for key, shape in
            (line.split(" ", 1) for line in lines if line.strip() and not line.startswith("#"))}


def random_state_dict(name, seed=0, dtype=np.float32):
    """Random arrays of the reference shapes; num_batches_tracked an int64 scalar."""
    rng = np.random.default_rng(seed)
    return {key: np.array(rng.integers(0, 10_000), np.int64) if key.endswith("num_batches_tracked")
            else rng.standard_normal(shape).astype(dtype) for key, shape in reference_shapes(name).items()}


def parameter_keys(name):
    """The reference keys without BatchNorm buffers (running statistics, num_batches_tracked)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return {key for key in reference_shapes(name) if not key.endswith(buffers)}


def assert_state_dicts_equal(given, expected):
    assert given.keys() == expected.keys()
    for key, value in expected.items():
        assert (given[key].dtype, given[key].shape) == (value.dtype, value.shape), key
        np.testing.assert_array_equal(given[key], value, err_msg=key)


# --- the mapping is a bijection onto the reference keys --------------------------------------------

@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_export_inverts_load(name):
    state_dict = random_state_dict(name)
    variables = models.load_reference_weights(name, state_dict)
    assert set(variables) == {"params", "batch_stats"}
    assert_state_dicts_equal(models.export_reference_weights(name, variables), state_dict)


def test_float64_weights_give_float64_params():
    state_dict = random_state_dict("vggsnn_dvs", dtype=np.float64)
    variables = models.load_reference_weights("vggsnn_dvs", state_dict)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float64)}
    assert variables["batch_stats"]["bn0"]["count"].dtype == jnp.int32
    assert_state_dicts_equal(models.export_reference_weights("vggsnn_dvs", variables), state_dict)


def test_num_classes_and_in_channels_follow_the_arrays():
    state_dict = random_state_dict("resnet18")
    state_dict["conv0.0.weight"] = np.ones((64, 1, 3, 3), np.float32)
    state_dict["classifier.0.weight"], state_dict["classifier.0.bias"] = np.ones((100, 512), np.float32), np.ones(100, np.float32)
    params = models.load_reference_weights("resnet18", state_dict)["params"]
    assert params["conv0"]["kernel"].shape == (3, 3, 1, 64)
    assert params["classifier"]["kernel"].shape == (512, 100)
    assert_state_dicts_equal(models.export_reference_weights("resnet18", {"params": params}),
                             {k: v for k, v in state_dict.items() if k in parameter_keys("resnet18")})


def test_params_alone_export_only_parameter_keys():
    state_dict = random_state_dict("resnet18")
    params = models.load_reference_weights("resnet18", state_dict)["params"]
    exported = models.export_reference_weights("resnet18", {"params": params})
    assert_state_dicts_equal(exported, {k: v for k, v in state_dict.items() if k in parameter_keys("resnet18")})


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_fresh_model_exports_the_reference_keys_and_shapes(name):
    shapes = reference_shapes(name)
    head = next(key for key in reversed(shapes) if key.endswith(".weight"))   # the last linear: [classes, in]
    stem = next(iter(shapes))                                                 # the first conv: [O, I, kh, kw]
    model = models.create(name, num_classes=shapes[head][0], in_channels=shapes[stem][1])
    images = jnp.zeros((1,) + models.INPUT_SHAPES[name][:2] + (shapes[stem][1],))
    abstract = jax.eval_shape(lambda: models.init(model, jax.random.key(0), images, timesteps=1))
    variables = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract)
    exported = models.export_reference_weights(name, variables)
    assert {key: value.shape for key, value in exported.items()} == shapes
    assert {value.dtype for value in exported.values()} == {np.dtype(np.float32), np.dtype(np.int64)}


# --- errors -----------------------------------------------------------------------------------------

def test_unknown_name():
    with pytest.raises(ValueError, match="resnet50") as error:
        models.load_reference_weights("resnet50", {})
    assert "vggsnn_dvs" in str(error.value)
    with pytest.raises(ValueError, match="resnet50"):
        models.export_reference_weights("resnet50", {"params": {}})


def test_missing_and_unexpected_keys_are_listed():
    state_dict = random_state_dict("vgg11")
    del state_dict["feature.5.running_var"]
    state_dict["feature.6.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"1 missing key\(s\): feature.5.running_var; "
                                         r"1 unexpected key\(s\): feature.6.weight"):
        models.load_reference_weights("vgg11", state_dict)


def test_many_missing_keys_are_counted():
    count = len(reference_shapes("sew_resnet34"))
    with pytest.raises(ValueError, match=rf"{count} missing key\(s\): (\S+, ){{10}}\.\.\. \({count - 10} more\)"):
        models.load_reference_weights("sew_resnet34", {})


def test_wrong_shape_names_the_key():
    state_dict = random_state_dict("resnet19")
    state_dict["layer2.0.conv1.weight"] = np.zeros((256, 128, 3, 1), np.float32)
    with pytest.raises(ValueError, match=r"layer2.0.conv1.weight: expected shape \(256, 128, 3, 3\), "
                                         r"got \(256, 128, 3, 1\)"):
        models.load_reference_weights("resnet19", state_dict)


def test_export_checks_the_variables():
    params = models.load_reference_weights("vgg11", random_state_dict("vgg11"))["params"]
    params = {**params, "conv9": params["conv0"]}
    with pytest.raises(ValueError, match=r"unexpected key\(s\): params/conv9/bias, params/conv9/kernel"):
        models.export_reference_weights("vgg11", {"params": params})


# --- the mapping is right: a NumPy forward pass in PyTorch's layout -----------------------------------

class NumpyReference:
    """The reference models' eval-mode ops on [T, B, C, H, W] (NCHW per step), reading a state_dict."""

    def __init__(self, state_dict):
        self.sd, self.rates = state_dict, []

    def conv(self, x, key, stride=1):
        """Conv2d, padding kernel // 2, weight [O, I, kh, kw], by einsum over patches."""
        weight, bias = self.sd[f"{key}.weight"], self.sd.get(f"{key}.bias")
        pad = weight.shape[-1] // 2
        lead, x = x.shape[:-3], x.reshape((-1,) + x.shape[-3:])
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        patches = sliding_window_view(x, weight.shape[-2:], axis=(2, 3))[:, :, ::stride, ::stride]
        out = np.einsum("nchwij,ocij->nohw", patches, weight, optimize=True)
        out = out if bias is None else out + bias[:, None, None]
        return out.reshape(lead + out.shape[1:])

    def bn(self, x, key):
        """BatchNorm2d in eval mode (running statistics, eps 1e-5)."""
        sd = {name: self.sd[f"{key}.{name}"][:, None, None] for name in ("weight", "bias", "running_mean",
                                                                          "running_var")}
        return (x - sd["running_mean"]) / np.sqrt(sd["running_var"] + 1e-5) * sd["weight"] + sd["bias"]

    def lif(self, x):
        """SPEC §1 over the leading time axis: decay 0.2, threshold 1, soft reset."""
        v, spikes = np.zeros_like(x[0]), []
        for x_t in x:
            u = 0.2 * v + x_t
            spikes.append((u >= 1.0).astype(x.dtype))
            v = u - spikes[-1]
        self.rates.append(np.mean(spikes))
        return np.stack(spikes)

    def linear(self, x, key):
        return x @ self.sd[f"{key}.weight"].T + self.sd[f"{key}.bias"]

    def blocks(self):
        """(prefix "layer{s}.{b}", stride) of the residual blocks in order; stride 2 opens stages 2, 3, ..."""
        stage_blocks = sorted({(int(stage[len("layer"):]), int(block)) for stage, block, *_ in
                               (key.split(".") for key in self.sd if key.startswith("layer"))})
        return [(f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1) for s, b in stage_blocks]

    def has(self, key):
        return f"{key}.weight" in self.sd


def avg_pool_2x2(x):
    *lead, h, w = x.shape
    return x.reshape(*lead, h // 2, 2, w // 2, 2).mean(axis=(-3, -1))


def max_pool_3x3_s2_p1(x):
    x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    return sliding_window_view(x, (3, 3), axis=(-2, -1))[..., ::2, ::2, :, :].max(axis=(-2, -1))


def flatten_chw(x):
    return x.reshape(x.shape[:2] + (-1,))


def global_avg_pool(x):
    return x.mean(axis=(-2, -1))


VGGSNN_DVS = (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A")  # SPEC §5


def vggsnn_dvs_forward(net, x):
    index = 0  # into the reference's nn.Sequential: conv, BN, LIF per conv; one module per pool
    for item in VGGSNN_DVS:
        if item == "A":
            x, index = avg_pool_2x2(x), index + 1
        else:
            x, index = net.lif(net.bn(net.conv(x, f"feature.{index}"), f"feature.{index + 1}")), index + 3
    return net.linear(flatten_chw(x), "classifier.0")


def resnet19_forward(net, x):
    x = net.lif(net.bn(net.conv(x, "conv0.0"), "conv0.1"))
    for block, stride in net.blocks():
        out = net.lif(net.bn(net.conv(x, f"{block}.conv1", stride), f"{block}.bn1"))
        out = net.bn(net.conv(out, f"{block}.conv2"), f"{block}.bn2")
        if net.has(f"{block}.shortcut.0"):
            x = net.bn(net.conv(x, f"{block}.shortcut.0", stride), f"{block}.shortcut.1")
        x = net.lif(out + x)
    x = net.lif(net.linear(global_avg_pool(x), "classifier.0"))
    return net.linear(x, "classifier.2")


def sew_resnet34_forward(net, x):
    x = max_pool_3x3_s2_p1(net.lif(net.bn(net.conv(x, "convNeuron1.0", 2), "convNeuron1.1")))
    for block, stride in net.blocks():
        out = net.lif(net.bn(net.conv(x, f"{block}.convNeuron1.0", stride), f"{block}.convNeuron1.1"))
        out = net.lif(net.bn(net.conv(out, f"{block}.convNeuron2.0"), f"{block}.convNeuron2.1"))
        if net.has(f"{block}.downsample.0"):
            x = net.lif(net.bn(net.conv(x, f"{block}.downsample.0", stride), f"{block}.downsample.1"))
        x = out + x
    return net.linear(global_avg_pool(x), "fc")


def preact_resnet34_forward(net, x):
    x = max_pool_3x3_s2_p1(net.bn(net.conv(x, "conv1", 2), "bn1"))
    for block, stride in net.blocks():
        out = net.bn(net.conv(net.lif(x), f"{block}.conv1", stride), f"{block}.bn1")
        out = net.bn(net.conv(net.lif(out), f"{block}.conv2"), f"{block}.bn2")
        if net.has(f"{block}.downsample.0"):
            x = net.bn(net.conv(x, f"{block}.downsample.0", stride), f"{block}.downsample.1")
        x = out + x
    return net.linear(global_avg_pool(x), "fc")


def spiking_state_dict(name, seed, gain=2.0):
    """float64 weights scaled gain/√fan_in and random BatchNorm statistics, so that neurons spike."""
    rng = np.random.default_rng(seed)
    shapes = reference_shapes(name)
    batchnorms = {key.rsplit(".", 1)[0] for key in shapes if key.endswith("running_mean")}
    state_dict = {}
    for key, shape in shapes.items():
        module, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            value = np.array(rng.integers(0, 10_000), np.int64)
        elif module in batchnorms:
            low, high = {"weight": (0.5, 1.5), "bias": (0.0, 0.5), "running_mean": (-0.3, 0.3),
                         "running_var": (0.5, 2.0)}[leaf]
            value = rng.uniform(low, high, shape)
        elif leaf == "weight":
            value = rng.standard_normal(shape) * gain / np.sqrt(np.prod(shape[1:]))
        else:
            value = rng.uniform(0.0, 0.5, shape)
        state_dict[key] = value
    return state_dict


NUMERICAL_CASES = {  # name: (forward, input [B, T, C, H, W], is the input a sequence?)
    "vggsnn_dvs": (vggsnn_dvs_forward, (2, 2, 2, 48, 48), True),
    "resnet19": (resnet19_forward, (2, 1, 3, 16, 16), False),
    "sew_resnet34": (sew_resnet34_forward, (2, 1, 3, 32, 32), False),
    "preact_resnet34": (preact_resnet34_forward, (2, 1, 3, 32, 32), False),
}


@pytest.mark.parametrize("name", NUMERICAL_CASES)
def test_loaded_weights_reproduce_a_pytorch_layout_forward(name):
    forward, shape, is_sequence = NUMERICAL_CASES[name]
    timesteps, rng = 2, np.random.default_rng(1)
    state_dict = spiking_state_dict(name, seed=2)
    inputs = (rng.random(shape) < 0.3).astype(np.float64) if is_sequence else rng.standard_normal(shape)

    net = NumpyReference(state_dict)
    x = np.moveaxis(inputs, 1, 0)                                   # [T or 1, B, C, H, W]
    expected = forward(net, np.broadcast_to(x, (timesteps,) + x.shape[1:])).mean(axis=0)
    assert all(0.01 < rate < 0.99 for rate in net.rates), net.rates  # every LIF layer spikes, none saturates

    model = models.create(name, num_classes=expected.shape[-1], in_channels=shape[2], dtype=jnp.float64)
    variables = models.load_reference_weights(name, state_dict)
    images = np.moveaxis(inputs, 2, -1)                             # [B, T, H, W, C]
    evaluate = jax.jit(functools.partial(rbp.evaluate, model, timesteps=timesteps))
    logits = evaluate(variables, images if is_sequence else images[:, 0])
    assert logits.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-10, atol=1e-10)
