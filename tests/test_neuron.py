"""lif_scan against plain NumPy loops of SPEC §1, forward and backward."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ratebp_jax as rbp

RESET_VARIANTS = [dict(reset=r, detach_reset=d) for r, d in itertools.product(("soft", "hard"), (True, False))]


def numpy_lif(x, decay, threshold, reset):
    """SPEC §1 written out as a loop over t; x: [T, N]."""
    v = np.zeros_like(x[0])
    spikes = []
    for x_t in x:
        u = decay * v + x_t
        s = (u - threshold >= 0).astype(x.dtype)
        v = u - threshold * s if reset == "soft" else u * (1 - s)
        spikes.append(s)
    return np.stack(spikes)


@pytest.mark.parametrize("variant", RESET_VARIANTS, ids=lambda v: f"{v['reset']}-detach{v['detach_reset']}")
@pytest.mark.parametrize("decay,threshold", [(0.2, 1.0), (0.5, 0.75)])
def test_lif_scan_matches_numpy_loop(variant, decay, threshold):
    rng = np.random.default_rng(0)
    x = rng.normal(threshold * 0.6, 0.5, size=(16, 300))
    want = numpy_lif(x, decay, threshold, variant["reset"])
    got = rbp.lif_scan(jnp.asarray(x), decay=decay, threshold=threshold, **variant)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert 0.05 < want.mean() < 0.95  # the inputs do exercise both outcomes


@pytest.mark.parametrize("variant", RESET_VARIANTS, ids=lambda v: f"{v['reset']}-detach{v['detach_reset']}")
def test_lif_scan_fires_exactly_at_threshold(variant):
    # Dyadic numbers with decay 0.5 make every u_t exact, so u_t == ϑ happens.
    x = np.array([[1.0, 0.75, 0.5], [0.5, 0.625, 0.75], [0.75, 0.6875, 1.0], [0.999, 1.0, 0.0]])
    want = numpy_lif(x, 0.5, 1.0, variant["reset"])
    got = rbp.lif_scan(jnp.asarray(x), decay=0.5, threshold=1.0, **variant)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert want[0, 0] == 1 and want[3, 1] == 1  # u == ϑ exactly fires
    assert want[3, 0] == 0 or variant["reset"] == "soft"  # 0.999 alone does not


def sigmoid_surrogate(z, alpha=4.0):
    sig = 1 / (1 + np.exp(-alpha * z))
    return alpha * sig * (1 - sig)


def hand_bptt_grad(x, w, decay, threshold, detach_reset):
    """∂(Σ_t w_t · s_t)/∂x for soft reset, derived by hand; x, w: [T, N].

    Forward u_t = λ v_{t-1} + x_t, s_t = H(u_t − ϑ), v_t = u_t − ϑ s_t.
    Backward, with a_t = ∂L/∂u_t and b_t = ∂L/∂v_t (b_T = 0):
        a_t = w_t σ'_t + b_t · (1 − ϑ σ'_t)   (1 when the reset is detached)
        b_{t-1} = λ a_t,    ∂L/∂x_t = a_t
    """
    v = np.zeros_like(x[0])
    sgs = []
    for x_t in x:
        u = decay * v + x_t
        s = (u >= threshold).astype(float)
        sgs.append(sigmoid_surrogate(u - threshold))
        v = u - threshold * s
    grad = np.zeros_like(x)
    b = np.zeros_like(x[0])
    for t in reversed(range(len(x))):
        dv_du = 1.0 if detach_reset else 1 - threshold * sgs[t]
        a = w[t] * sgs[t] + b * dv_du
        grad[t] = a
        b = decay * a
    return grad


@pytest.mark.parametrize("detach_reset", [True, False])
def test_bptt_grad_matches_hand_derivation(detach_reset):
    x = np.array([[1.2, 0.4], [0.7, 0.9], [0.3, 1.1]])  # 3 steps, 2 neurons
    w = np.array([[1.0, -2.0], [0.5, 1.5], [-1.0, 3.0]])

    def loss(x):
        return jnp.sum(w * rbp.lif_scan(x, detach_reset=detach_reset))

    got = jax.grad(loss)(jnp.asarray(x))
    want = hand_bptt_grad(x, w, decay=0.2, threshold=1.0, detach_reset=detach_reset)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-15)
    if not detach_reset:  # the reset path does contribute
        assert not np.allclose(want, hand_bptt_grad(x, w, 0.2, 1.0, True))


def test_surrogates_integrate_to_one():
    """Every surrogate is a density: ∫σ'(z)dz = 1 (the step's total rise)."""
    z = np.linspace(-60, 60, 2_000_001)
    for name in rbp.SURROGATES:
        area = np.trapezoid(np.asarray(rbp.surrogate_grad(jnp.asarray(z), name, 4.0)), z)
        assert abs(area - 1) < 2e-2, name  # arctan and fast_sigmoid have heavy tails


def test_spike_fn_gradient_is_the_surrogate():
    z = jnp.linspace(-1.0, 1.0, 11)
    for name in rbp.SURROGATES:
        g = jax.grad(lambda z: jnp.sum(rbp.spike_fn(z, name, 3.0)))(z)
        np.testing.assert_allclose(g, rbp.surrogate_grad(z, name, 3.0), rtol=1e-15)
