"""The rate-based primitives: eligibility (SPEC oracle 3), rate_grad, BatchNorm statistics."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ratebp_jax as rbp

RESET_VARIANTS = [dict(reset=r, detach_reset=d) for r, d in itertools.product(("soft", "hard"), (True, False))]


def bptt_rate_derivative(x, **neuron):
    """∂ mean_t lif_scan(x + c) / ∂c per neuron, by jax.grad through BPTT; x: [T, N]."""
    def total_rate(c):
        return jnp.sum(jnp.mean(rbp.lif_scan(x + c, **neuron), axis=0))
    return jax.grad(total_rate)(jnp.zeros_like(x[0]))


@pytest.mark.parametrize("surrogate", rbp.SURROGATES)
@pytest.mark.parametrize("variant", RESET_VARIANTS, ids=lambda v: f"{v['reset']}-detach{v['detach_reset']}")
@pytest.mark.parametrize("num_steps", [pytest.param(1, marks=pytest.mark.slow), 4,
                                       pytest.param(16, marks=pytest.mark.slow)])  # 48 compilations in all
def test_eligibility_is_bptt_derivative_of_rate(surrogate, variant, num_steps):
    """SPEC oracle 3, float64, relative error ≤ 1e-10."""
    x = jnp.asarray(np.random.default_rng(num_steps).normal(0.6, 0.6, size=(num_steps, 500)))
    neuron = dict(surrogate=surrogate, threshold=0.9, **variant)
    rate, elig = rbp.lif_rate_stats(x, **neuron)
    want = bptt_rate_derivative(x, **neuron)
    np.testing.assert_allclose(np.asarray(elig), np.asarray(want), rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(rate, jnp.mean(rbp.lif_scan(x, **neuron), axis=0))
    assert np.count_nonzero(np.asarray(want)) > 100  # not vacuously zero


def test_lif_rate_stats_has_no_gradient():
    x = jnp.linspace(0.0, 2.0, 12).reshape(3, 4)
    g = jax.grad(lambda x: jnp.sum(sum(rbp.lif_rate_stats(x))))(x)
    assert not np.any(np.asarray(g))


def rate_grad_case(shape=(5, 7), seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    x, rate, elig, g = (jax.random.uniform(k, shape, jnp.float64) for k in keys)
    return x, rate, elig, g


def test_rate_grad_value_and_vjp():
    x, rate, elig, g = rate_grad_case()
    y, vjp = jax.vjp(rbp.rate_grad, x, rate, elig)
    np.testing.assert_array_equal(y, rate)
    gx, grate, gelig = vjp(g)
    np.testing.assert_array_equal(gx, g * elig)
    assert not np.any(np.asarray(grate)) and not np.any(np.asarray(gelig))


def test_rate_grad_under_jit_vmap_and_scan():
    x, rate, elig, g = rate_grad_case(shape=(3, 5, 7))

    def loss(x, rate, elig):
        return jnp.sum(g * rbp.rate_grad(x, rate, elig))

    want = g * elig
    np.testing.assert_array_equal(jax.jit(jax.grad(loss))(x, rate, elig), want)
    per_row = jax.vmap(jax.grad(lambda x, r, e, g: jnp.sum(g * rbp.rate_grad(x, r, e))))(x, rate, elig, g)
    np.testing.assert_array_equal(per_row, want)

    def scanned(x):
        def body(total, args):
            return total + jnp.sum(args[3] * rbp.rate_grad(*args[:3])), None
        return jax.lax.scan(body, 0.0, (x, rate, elig, g))[0]

    np.testing.assert_array_equal(jax.grad(scanned)(x), want)
    np.testing.assert_array_equal(jax.vmap(rbp.rate_grad)(x, rate, elig), rate)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_dtypes_are_preserved(dtype):
    x = jnp.asarray(np.random.default_rng(1).normal(0.8, 0.5, (6, 3, 4)), dtype)
    spikes = rbp.lif_scan(x)
    rate, elig = rbp.lif_rate_stats(x)
    y, vjp = jax.vjp(rbp.rate_grad, x[0], rate, elig)
    assert spikes.dtype == rate.dtype == elig.dtype == y.dtype == dtype
    assert vjp(jnp.ones_like(y))[0].dtype == dtype
    assert jax.grad(lambda x: jnp.sum(rbp.lif_scan(x)).astype(jnp.float32))(x).dtype == dtype
    assert set(np.unique(np.asarray(spikes, np.float32))) <= {0.0, 1.0}


@pytest.mark.parametrize("kwargs,name", [
    (dict(reset="zero"), "reset"),
    (dict(surrogate="relu"), "surrogate"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=-1.0), "threshold"),
    (dict(decay=1.0), "decay"),
    (dict(decay=-0.1), "decay"),
    (dict(alpha=0.0), "alpha"),
])
def test_invalid_neuron_arguments_name_the_argument(kwargs, name):
    x = jnp.ones((2, 3))
    for fn in (rbp.lif_scan, rbp.lif_rate_stats):
        with pytest.raises(ValueError, match=name):
            fn(x, **kwargs)


def test_zero_timesteps_is_rejected():
    for fn in (rbp.lif_scan, rbp.lif_rate_stats):
        with pytest.raises(ValueError, match=r"T >= 1"):
            fn(jnp.ones((0, 3)))


def test_rate_moments_values_and_gradients():
    """Rate-pass BN statistics: spike-pass values, rate-input gradients (SPEC §3.2)."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(8, 4, 4, 3)))
    spike_mean, spike_var = jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.uniform(0.5, 2, size=3))
    mean, var = rbp.rate_moments(x, spike_mean, spike_var)
    np.testing.assert_allclose(mean, spike_mean, rtol=1e-15)
    np.testing.assert_allclose(var, spike_var, rtol=1e-15)
    # When the spike statistics are those of x itself, the rate pass is plain
    # batch normalisation, values and gradients alike.
    w = jnp.asarray(rng.normal(size=(2, 3)))

    def loss(moments_fn, x):
        mean, var = moments_fn(x)
        return jnp.sum(w[0] * mean + w[1] * var) + jnp.sum(jnp.sin(x) * (x - mean) / jnp.sqrt(var + 1e-5))

    spike_moments = rbp.batch_moments(x)
    g_rate = jax.grad(lambda x: loss(lambda x: rbp.rate_moments(x, *spike_moments), x))(x)
    g_bn = jax.grad(lambda x: loss(rbp.batch_moments, x))(x)
    np.testing.assert_allclose(g_rate, g_bn, rtol=1e-12)


def _rate_bn_case(seed, shape):
    """x, recorded statistics (channel 1 with σ²_s = 0), scale, bias and a loss weight."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    spike_var = jnp.asarray(rng.uniform(0.5, 2, size=channels)).at[1].set(0.0)
    return (jnp.asarray(rng.normal(1, 2, size=shape)), jnp.asarray(rng.normal(size=channels)), spike_var,
            jnp.asarray(rng.normal(size=channels)), jnp.asarray(rng.normal(size=channels)),
            jnp.asarray(rng.normal(size=shape)))


def _bn_loss(bn_fn, w):
    return lambda x, scale, bias: jnp.sum(w * jnp.sin(bn_fn(x, scale, bias)))


def test_rate_batchnorm_equals_autodiff_through_rate_moments():
    x, spike_mean, spike_var, scale, bias, w = _rate_bn_case(4, (6, 3, 3, 3))

    def composed(x, scale, bias):
        return rbp.ratebp.normalize(x, *rbp.rate_moments(x, spike_mean, spike_var), scale, bias, 1e-5)

    def fused(x, scale, bias):
        return rbp.rate_batchnorm(x, spike_mean, spike_var, scale, bias, 1e-5)

    np.testing.assert_allclose(fused(x, scale, bias), composed(x, scale, bias), rtol=1e-13, atol=1e-14)
    want = jax.grad(_bn_loss(composed, w), argnums=(0, 1, 2))(x, scale, bias)
    got = jax.grad(_bn_loss(fused, w), argnums=(0, 1, 2))(x, scale, bias)
    for g, g_want in zip(got, want):
        np.testing.assert_allclose(g, g_want, rtol=1e-11, atol=1e-12)
    assert np.abs(want[0][..., 1]).max() > 0  # the σ²_s = 0 channel still passes a gradient to x


def test_rate_batchnorm_gradient_is_global_under_pmap():
    """Per-device input gradients under pmap (SyncBatchNorm) are the slices of the global-batch gradient."""
    devices = jax.local_devices()[:4]
    x, spike_mean, spike_var, scale, bias, w = _rate_bn_case(5, (8, 2, 2, 3))

    def grads(x, w, axis_name):
        fn = lambda x, scale, bias: rbp.rate_batchnorm(x, spike_mean, spike_var, scale, bias, 1e-5, axis_name)
        return jax.grad(_bn_loss(fn, w), argnums=(0, 1, 2))(x, scale, bias)

    split = lambda a: a.reshape((4, 2) + a.shape[1:])
    dx, d_scale, d_bias = jax.pmap(lambda x, w: grads(x, w, "batch"), axis_name="batch", devices=devices)(
        split(x), split(w))
    want_dx, want_scale, want_bias = grads(x, w, None)
    np.testing.assert_allclose(dx.reshape(x.shape), want_dx, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(d_scale.sum(0), want_scale, rtol=1e-11)  # per-device sums add up
    np.testing.assert_allclose(d_bias.sum(0), want_bias, rtol=1e-11)


def test_batch_moments_are_global_under_pmap():
    devices = jax.local_devices()[:4]
    assert len(devices) == 4, "conftest sets 4 CPU devices"
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5, 6, 2)))
    mean, var = jax.pmap(lambda x: rbp.batch_moments(x, "batch"), axis_name="batch", devices=devices)(x)
    want_mean, want_var = rbp.batch_moments(x)
    np.testing.assert_allclose(mean, np.broadcast_to(want_mean, (4, 2)), rtol=1e-13)
    np.testing.assert_allclose(var, np.broadcast_to(want_var, (4, 2)), rtol=1e-13)
