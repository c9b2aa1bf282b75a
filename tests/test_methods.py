"""The four training methods: SPEC oracles 1 and 2, agreement with a hand-written
BPTT, and checks of inputs and names."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ratebp_jax as rbp
from ratebp_jax import layers, methods, models

ALL_MODELS = models.NAMES
STATIC_MODELS = [n for n in ALL_MODELS if n not in ("sew_resnet34", "preact_resnet34")]  # oracle 2 holds


def slow_unless(names, fast):
    """``names`` as pytest parameters, those not in ``fast`` (the larger models) marked slow."""
    return [name if name in fast else pytest.param(name, marks=pytest.mark.slow) for name in names]


def small_shape(name):
    """16×16 inputs (8×8 for digits): the oracles hold at any size, and the deepest
    models still keep at least 1×1 feature maps."""
    h, w, c = models.INPUT_SHAPES[name]
    return (min(h, 16), min(w, 16), c)


def random_variables(model, images, seed=0):
    """{"params", "batch_stats"} drawn with NumPy: kernels ~ N(0, 2/fan_in), BatchNorm and
    running statistics perturbed. The oracles hold for any parameters, and this costs no
    compilation (models.init compiles its initialisers, seconds per model)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, mode="bptt_step"))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif name in ("bias", "mean"):
            value = rng.normal(0, 0.1, leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def setup(name, dtype=jnp.float64, batch=3, seed=0, shape=None):
    shape = shape or small_shape(name)
    model = models.create(name, num_classes=10, in_channels=shape[-1], dtype=dtype)
    images = jax.random.uniform(jax.random.key(seed + 1), (batch,) + shape, dtype)
    labels = jnp.arange(batch) % 10
    return model, random_variables(model, images, seed), images, labels


@functools.partial(jax.jit, static_argnames=("model", "method", "timesteps"))
def step(model, method, variables, images, labels, timesteps):
    """One step of method; sltt_k backpropagates K = 1 step, drawn from key 0."""
    options = dict(rng=jax.random.key(0), k=1) if method == "sltt_k" else {}
    return methods.step_output(method, model, variables, images, labels, timesteps=timesteps, **options)


def relative_error(a, b):
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    num = sum(float(jnp.sum(jnp.square(x - y))) for x, y in zip(a, b))
    return np.sqrt(num / sum(float(jnp.sum(jnp.square(y))) for y in b))


# One model per code path: resnet19 is resnet18's code at other widths, vgg11 and vgg13 are the VGG
# code of vggsnn_* with digits_vgg's global pool (about 140 s of the suite on 2 cores for nothing new);
# mlp has its own test with and without BatchNorm (test_mlp.py).
ORACLE_MODELS = [n for n in ALL_MODELS if n not in ("resnet19", "vgg11", "vgg13", "mlp")]


@pytest.mark.parametrize("name", slow_unless(ORACLE_MODELS, fast=("digits_vgg",)))
def test_oracles_1_and_5_at_one_timestep(name):
    """SPEC oracles 1 and 5, float64: at T = 1, rate_m == bptt_m, and rate_s, sltt and
    ottt == bptt_s.

    The input is given as a one-step sequence [B, 1, H, W, C], so every model
    and method also runs on sequences here (static inputs: the float32 test below).
    """
    model, variables, images, labels = setup(name, batch=2)
    sequence = images[:, None]
    reference = {bptt: step(model, bptt, variables, sequence, labels, 1) for bptt in ("bptt_m", "bptt_s")}
    for method, bptt in (("rate_m", "bptt_m"), ("rate_s", "bptt_s"), ("sltt", "bptt_s"), ("ottt", "bptt_s")):
        r, b = step(model, method, variables, sequence, labels, 1), reference[bptt]
        assert relative_error(r.grads, b.grads) <= 1e-8, (method, bptt)
        assert relative_error(r.batch_stats, b.batch_stats) <= 1e-12
        np.testing.assert_allclose(r.loss, b.loss, rtol=1e-12)
        assert float(optax.tree.norm(b.grads)) > 0


def spike_and_rate_logits(model, variables, images, timesteps):
    """(time-mean spike-pass logits, rate-pass logits), both [B, classes]."""
    x = jnp.broadcast_to(images, (timesteps,) + images.shape)
    spike_logits, state = model.apply(variables, x, mode="spike", mutable=["batch_stats", layers.RECORD])
    rate_variables = {**variables, layers.RECORD: state[layers.RECORD]}
    return spike_logits.mean(axis=0), model.apply(rate_variables, images, mode="rate")


@pytest.mark.parametrize("name", slow_unless(STATIC_MODELS, fast=("digits_vgg", "vgg11", "vggsnn_dvs")))
def test_oracle2_rate_pass_is_the_time_mean_of_the_spike_pass(name):
    """SPEC oracle 2, float64, T = 4: rate-pass logits == mean_t spike-pass logits.

    At the models' own input sizes (forward passes only), so that vggsnn_cifar's
    adaptive pool has overlapping cells (4×4 -> 3×3)."""
    model, variables, images, _ = setup(name, batch=4, shape=models.INPUT_SHAPES[name])
    spike_logits, rate_logits = jax.jit(spike_and_rate_logits, static_argnums=(0, 3))(model, variables, images, 4)
    np.testing.assert_allclose(rate_logits, spike_logits, rtol=1e-10, atol=1e-10 * float(jnp.abs(spike_logits).max()))
    assert float(jnp.std(spike_logits)) > 0


# --- BPTT against a hand-written network ------------------------------------------

def hand_written_digits_vgg(params, stats, x, per_step):
    """digits_vgg written out with lax.conv and lif_scan; x: [T, B, 8, 8, 1].

    per_step=False: BatchNorm statistics over T·B (multi-step BPTT);
    per_step=True: over B at each t, running statistics updated T times
    (single-step BPTT: the network is causal, so computing it layer by layer
    over the whole sequence gives what step-by-step application gives).
    Returns (time-mean logits [B, 10], new running statistics).
    """
    new_stats = {}

    def conv(p, h):
        out = jax.lax.conv_general_dilated(h.reshape((-1,) + h.shape[2:]), p["kernel"], (1, 1), ((1, 1), (1, 1)),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (out + p["bias"]).reshape(h.shape[:2] + out.shape[1:])

    def batch_norm(name, h):
        axes = (1, 2, 3) if per_step else (0, 1, 2, 3)
        mean, var = h.mean(axis=axes, keepdims=True), h.var(axis=axes, keepdims=True)
        n = h.size // h.shape[-1] // (h.shape[0] if per_step else 1)
        running_mean, running_var = stats[name]["mean"], stats[name]["var"]
        for m, v in zip(mean.reshape(-1, h.shape[-1]), var.reshape(-1, h.shape[-1])):
            running_mean = 0.9 * running_mean + 0.1 * m
            running_var = 0.9 * running_var + 0.1 * v * n / (n - 1)
        new_stats[name] = {"mean": running_mean, "var": running_var,
                           "count": stats[name]["count"] + mean.reshape(-1, h.shape[-1]).shape[0]}
        return (h - mean) / jnp.sqrt(var + 1e-5) * params[name]["scale"] + params[name]["bias"]

    def cbl(i, h):
        return rbp.lif_scan(batch_norm(f"bn{i}", conv(params[f"conv{i}"], h)))

    h = cbl(1, cbl(0, x))
    h = h.reshape(h.shape[:2] + (4, 2, 4, 2, h.shape[-1])).mean(axis=(3, 5))  # 2×2 average pool
    h = cbl(2, h).mean(axis=(2, 3))
    logits = h @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    return logits.mean(axis=0), new_stats


@pytest.mark.slow  # about 25 s; the fast part keeps oracles 1 and 5 on digits_vgg
@pytest.mark.parametrize("method", ["bptt_m", "bptt_s"])
def test_bptt_matches_a_hand_written_network(method):
    model, variables, images, labels = setup("digits_vgg", batch=6)
    sequence = jax.random.uniform(jax.random.key(7), (6, 3) + images.shape[1:], jnp.float64) * 2

    def hand_loss(params):
        logits, stats = hand_written_digits_vgg(params, variables["batch_stats"], jnp.moveaxis(sequence, 1, 0),
                                                per_step=method == "bptt_s")
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), stats

    (loss, stats), grads = jax.value_and_grad(hand_loss, has_aux=True)(variables["params"])
    out = step(model, method, variables, sequence, labels, 3)
    np.testing.assert_allclose(out.loss, loss, rtol=1e-12)
    assert relative_error(out.grads, grads) <= 1e-10
    assert relative_error(out.batch_stats, stats) <= 1e-12


# --- every model and method runs; bad arguments are named ----------------------------

@pytest.mark.slow  # every method on digits_vgg, half of them on each residual net (about 100 s in all)
@pytest.mark.parametrize("name", ["resnet18", "digits_vgg", "sew_resnet34"])
def test_every_method_runs_in_float32(name):
    """Finite float32 gradients of static inputs at T = 2: every method on digits_vgg, and on a
    residual net each method once (the layers, where dtypes are handled, are shared; every code
    path runs in oracle 1 above): the methods of SPEC §2-3 on sew_resnet34, the baselines on resnet18.
    sew_resnet34 gets 64×64 inputs: at 16×16 its last stage is 1×1, and per-step
    BatchNorm over 2 values per channel makes rate_s's gradient grow ~100× per block
    (a degenerate batch, not a bug)."""
    shape = (64, 64, 3) if name == "sew_resnet34" else None
    model, variables, images, labels = setup(name, dtype=jnp.float32, batch=2, shape=shape)
    for method in {"sew_resnet34": rbp.METHODS[:4], "resnet18": rbp.METHODS[4:]}.get(name, rbp.METHODS):
        out = step(model, method, variables, images, labels, 2)
        assert out.logits.shape == (2, 10) and np.isfinite(float(out.loss))
        assert jax.tree.structure(out.grads) == jax.tree.structure(variables["params"])
        assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in jax.tree.leaves(out.grads))
        assert jax.tree.structure(out.batch_stats) == jax.tree.structure(variables["batch_stats"])


@pytest.mark.slow  # every method, T = 4 (75 s of a loaded 2-core run)
def test_static_images_equal_a_sequence_of_repeated_frames():
    """[B, H, W, C] repeated T times and the sequence [B, T, H, W, C] of copies train alike."""
    model, variables, images, labels = setup("digits_vgg", batch=4)
    sequence = jnp.repeat(images[:, None], 4, axis=1)
    for method in rbp.METHODS:
        static, seq = (step(model, method, variables, x, labels, 4) for x in (images, sequence))
        np.testing.assert_allclose(static.loss, seq.loss, rtol=1e-13)
        assert relative_error(static.grads, seq.grads) <= 1e-12, method
        assert relative_error(static.batch_stats, seq.batch_stats) <= 1e-12


def test_rate_s_spike_counts_are_exact(monkeypatch):
    """rate_s carries the spike sums as uint8 counts for 1 < T < 256; the step is the one with float sums."""
    sums = {"spike0": {"rate": jnp.zeros(3), "elig": jnp.zeros(3)}, "bn0": {"mean": jnp.zeros(2)}}
    assert methods._as_spike_counts(sums, 3)["spike0"]["rate"].dtype == jnp.uint8
    assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(methods._as_spike_counts(sums, 3)["bn0"]))
    for t in (1, 256):
        assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(methods._as_spike_counts(sums, t)))
    model, variables, images, labels = setup("digits_vgg", batch=4)
    run = lambda: jax.jit(lambda v: methods.step_output("rate_s", model, v, images, labels, timesteps=5))(variables)
    counted = run()
    monkeypatch.setattr(methods, "_as_spike_counts", lambda record_sums, timesteps: record_sums)
    summed = run()
    jax.tree.map(np.testing.assert_array_equal, counted, summed)
    assert counted.grads["conv0"]["kernel"].dtype == jnp.float64


def test_bad_arguments_name_the_argument():
    model, variables, images, labels = setup("digits_vgg", dtype=jnp.float32, batch=2)
    with pytest.raises(ValueError, match="method must be one of"):
        rbp.compute_grads("rate", model, variables, images, labels, timesteps=2)
    with pytest.raises(ValueError, match="timesteps"):
        rbp.compute_grads("rate_m", model, variables, images, labels, timesteps=0)
    sequence = jnp.stack([images] * 3, axis=1)
    with pytest.raises(ValueError, match="images is a sequence of 3 steps"):
        rbp.compute_grads("bptt_s", model, variables, sequence, labels, timesteps=4)
    with pytest.raises(ValueError, match="images must be"):
        rbp.compute_grads("bptt_m", model, variables, images[0], labels, timesteps=2)
