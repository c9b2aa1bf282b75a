"""The model zoo: architecture sizes of SPEC §5, pooling, and argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ratebp_jax import layers, models
from ratebp_jax.models import common

# SPEC §5: trainable parameters (incl. BatchNorm scale/bias), BatchNorm and LIF layers.
REFERENCE_SIZES = {
    ("resnet18", 10): (11_173_962, 20, 17),
    ("resnet18", 100): (11_220_132, 20, 17),
    ("resnet19", 10): (12_697_994, 19, 18),
    ("vgg11", 10): (11_001_354, 8, 8),
    ("vgg13", 10): (9_416_010, 10, 10),
    ("vggsnn_cifar", 100): (9_686_884, 8, 8),
    ("vggsnn_dvs", 10): (9_271_498, 8, 8),
    ("sew_resnet34", 1000): (21_806_184, 36, 36),
    ("preact_resnet34", 1000): (21_806_184, 36, 32),
}


def layer_counts(model, shape):
    """(BatchNorm, LIF) layers: what each records in a spike pass (shapes only, nothing runs)."""
    x = jnp.zeros((1, 2) + shape)  # [T, B, H, W, C]
    _, state = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, mode="spike"))
    record = jax.tree_util.tree_flatten_with_path(state[layers.RECORD])[0]
    names = [path[-1].key for path, _ in record]
    return names.count("inv_var"), names.count("rate")


@pytest.mark.parametrize("name,num_classes", list(REFERENCE_SIZES), ids=lambda v: str(v))
def test_sizes_match_the_reference(name, num_classes):
    shape = models.INPUT_SHAPES[name]
    model = models.create(name, num_classes=num_classes, in_channels=shape[-1])
    images = jnp.zeros((2,) + shape)
    params = jax.eval_shape(lambda: models.init(model, jax.random.key(0), images, timesteps=1))["params"]
    assert (models.count_params(params), *layer_counts(model, shape)) == REFERENCE_SIZES[name, num_classes]


def test_every_model_is_listed():
    assert set(models.NAMES) == {name for name, _ in REFERENCE_SIZES} | {"digits_vgg", "mlp"}


def numpy_adaptive_avg_pool(x, size):
    """PyTorch's AdaptiveAvgPool2d on [H, W]: cell i spans [floor(i·n/s), ceil((i+1)·n/s))."""
    n, m = x.shape
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            r0, r1 = (i * n) // size, -(-((i + 1) * n) // size)
            c0, c1 = (j * m) // size, -(-((j + 1) * m) // size)
            out[i, j] = x[r0:r1, c0:c1].mean()
    return out


@pytest.mark.parametrize("n", [3, 4, 5, 7, 8])
def test_adaptive_avg_pool_matches_pytorch_rule(n):
    x = np.random.default_rng(n).normal(size=(2, 3, n, n, 4))
    got = np.asarray(common.adaptive_avg_pool(jnp.asarray(x), 3))
    assert got.shape == (2, 3, 3, 3, 4)
    for index in np.ndindex(2, 3):
        for c in range(4):
            np.testing.assert_allclose(got[index][..., c], numpy_adaptive_avg_pool(x[index][..., c], 3), rtol=1e-13)


def test_max_and_avg_pool_match_loops():
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 3))
    got = np.asarray(common.max_pool(jnp.asarray(x), 3, 2, 1))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    want = np.array([[[padded[b, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1)) for j in range(4)]
                      for i in range(4)] for b in range(2)])
    np.testing.assert_array_equal(got, want)
    got = np.asarray(common.avg_pool(jnp.asarray(x[:, :6, :6])))
    want = x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.slow  # initialises ResNet-18 (46 s of a loaded 2-core run)
def test_reference_initialisation_statistics():
    """VGG weights ~ N(0, 0.5²), biases 0; ResNet convs ~ U(±1/√fan_in) (PyTorch default)."""
    digits = jnp.zeros((2, 8, 8, 1))  # digits_vgg is built by the VGG family code
    vgg = models.init(models.create("digits_vgg", num_classes=10, in_channels=1), jax.random.key(0), digits,
                      timesteps=1)["params"]
    kernel = np.asarray(vgg["conv2"]["kernel"])
    assert abs(kernel.std() - 0.5) < 0.01 and not np.any(np.asarray(vgg["conv2"]["bias"]))
    x = jnp.zeros((2, 32, 32, 3))
    resnet = models.init(models.create("resnet18", num_classes=10), jax.random.key(0), x, timesteps=1)["params"]
    kernel = np.asarray(resnet["layer2_0"]["conv2"]["kernel"])
    bound = 1 / np.sqrt(3 * 3 * 128)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="model must be one of"):
        models.create("resnet50", num_classes=10)
    with pytest.raises(ValueError, match="reset"):
        models.create("resnet18", num_classes=10, reset="zero")
    model = models.create("resnet18", num_classes=10, in_channels=2)
    with pytest.raises(ValueError, match="in_channels=2"):
        models.init(model, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), timesteps=1)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 2)), mode="train")
