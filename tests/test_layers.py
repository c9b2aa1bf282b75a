"""LIF and BatchNorm modules in each mode, against the functional core and PyTorch's rules."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ratebp_jax as rbp
from ratebp_jax import layers


def scan_steps(module, variables, xs, mode, collections):
    """Runs module once per step of xs ([T, ...]) carrying the given collections."""
    def step(state, x_t):
        y, state = module.apply({**variables, **state}, x_t, mode=mode, mutable=collections)
        return state, y
    _, init_state = module.init_with_output(jax.random.key(0), xs[0], mode=mode)
    state = {c: jax.tree.map(jnp.zeros_like, init_state[c]) for c in collections if c != "batch_stats"}
    if "batch_stats" in collections:
        state["batch_stats"] = variables["batch_stats"]
    return jax.lax.scan(step, state, xs)


@pytest.mark.parametrize("reset,detach_reset", itertools.product(("soft", "hard"), (True, False)))
def test_lif_modes_agree_with_the_functional_core(reset, detach_reset):
    x = jnp.asarray(np.random.default_rng(0).normal(0.7, 0.6, size=(5, 4, 3)))  # [T, B, N]
    neuron = rbp.LIFParams(decay=0.3, reset=reset, detach_reset=detach_reset)
    lif = layers.LIF(neuron)
    np.testing.assert_array_equal(lif.apply({}, x, mode="bptt"), rbp.lif_scan(x, neuron))
    spikes, state = lif.apply({}, x, mode="spike", mutable=[layers.RECORD])
    rate, elig = rbp.lif_rate_stats(x, neuron)
    np.testing.assert_array_equal(spikes, rbp.lif_scan(x, neuron))
    np.testing.assert_array_equal(state[layers.RECORD]["rate"], rate)
    np.testing.assert_array_equal(state[layers.RECORD]["elig"], elig)
    # single steps: the same spikes, and record sums that are T times the means
    state, step_spikes = scan_steps(lif, {}, x, "spike_step", [layers.RECORD, layers.MEMBRANE])
    np.testing.assert_array_equal(step_spikes, spikes)
    np.testing.assert_allclose(state[layers.RECORD]["rate"] / 5, rate, rtol=1e-15)
    np.testing.assert_allclose(state[layers.RECORD]["elig"] / 5, elig, rtol=1e-14)
    # κ is carried as one scalar where it is the same for every neuron (soft reset, detached)
    kappa_shape = () if (reset, detach_reset) == ("soft", True) else x.shape[1:]
    assert state[layers.MEMBRANE]["kappa"].shape == kappa_shape
    _, step_spikes = scan_steps(lif, {}, x, "bptt_step", [layers.MEMBRANE])
    np.testing.assert_array_equal(step_spikes, spikes)


def test_batchnorm_running_statistics_follow_pytorch():
    """momentum 0.1, unbiased variance, a counter; rate and eval modes do not update."""
    x = jnp.asarray(np.random.default_rng(1).normal(2.0, 3.0, size=(2, 6, 3)))  # [T, B, C]
    bn = layers.BatchNorm(param_dtype=jnp.float64)
    variables = bn.init(jax.random.key(0), x, mode="bptt")
    y, updates = bn.apply(variables, x, mode="bptt", mutable=["batch_stats"])
    flat = np.asarray(x).reshape(-1, 3)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["mean"], 0.1 * flat.mean(0), rtol=1e-14)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-14)
    assert int(stats["count"]) == 1
    np.testing.assert_allclose(y, (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), rtol=1e-12)
    _, record = bn.apply(variables, x, mode="spike", mutable=["batch_stats", layers.RECORD])
    rate_state = {**variables, layers.RECORD: record[layers.RECORD]}
    _, after_rate = bn.apply(rate_state, x[0], mode="rate", mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, after_rate["batch_stats"], variables["batch_stats"])
    evaluated = bn.apply({**variables, **updates}, x, mode="eval")
    np.testing.assert_allclose(evaluated, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5), rtol=1e-12)


def test_single_step_spike_statistics_are_time_means():
    """rate_s records μ_s = mean_t μ_t and σ²_s + ε = 1 / mean_t 1/(σ²_t + ε) (SPEC §3.1)."""
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8, 3)) * np.arange(1, 5)[:, None, None])
    bn = layers.BatchNorm(param_dtype=jnp.float64)
    variables = bn.init(jax.random.key(0), xs[0], mode="bptt_step")
    state, _ = scan_steps(bn, variables, xs, "spike_step", ["batch_stats", layers.RECORD])
    record = jax.tree.map(lambda s: s / 4, state[layers.RECORD])
    mean_t, var_t = np.asarray(xs).mean(axis=1), np.asarray(xs).var(axis=1)
    np.testing.assert_allclose(record["mean"], mean_t.mean(0), rtol=1e-13)
    np.testing.assert_allclose(record["inv_var"], (1 / (var_t + 1e-5)).mean(0), rtol=1e-13)
    running = np.zeros(3), np.ones(3)
    for t in range(4):  # running statistics updated at every step
        running = 0.9 * running[0] + 0.1 * mean_t[t], 0.9 * running[1] + 0.1 * var_t[t] * 8 / 7
    np.testing.assert_allclose(state["batch_stats"]["mean"], running[0], rtol=1e-13)
    np.testing.assert_allclose(state["batch_stats"]["var"], running[1], rtol=1e-13)
    assert int(state["batch_stats"]["count"]) == 4


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_batchnorm_computes_statistics_in_float32(dtype):
    x = (jnp.arange(64.0).reshape(2, 8, 4) * 100 + 1000).astype(dtype)
    bn = layers.BatchNorm(dtype=dtype)
    variables = bn.init(jax.random.key(0), x, mode="bptt")
    y, updates = bn.apply(variables, x, mode="bptt", mutable=["batch_stats"])
    assert y.dtype == dtype and updates["batch_stats"]["mean"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float32).std(axis=(0, 1)), 1.0, atol=0.02)
