"""The baselines of SPEC §3.4 (sltt, sltt_k, ottt, bptt_remat): oracles 5-7, bptt_s's
unrolled loop, and the compiled memory of each (XLA's memory_analysis, not timings)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ratebp_jax as rbp
from ratebp_jax import analysis, layers, methods, models
from ratebp_jax.methods import MEMBRANE
from ratebp_jax.models.common import Layers
from test_methods import relative_error, setup, step


def per_step_loop(model, variables, images, labels, timesteps, *, detach_membranes, step_weights=None):
    """(loss, grads) by whole-sequence autodiff through a plain Python loop over t of the
    network in "bptt_step" mode; images [B, T, H, W, C].

    detach_membranes=True: the carried membranes are wrapped in stop_gradient and the loss
    is Σ_t w_t CE(o_t, y) with w_t = step_weights[t] (default 1/T: SLTT, SPEC oracle 6);
    False: the loss is CE(mean_t o_t, y) (BPTT, as bptt_s).
    """
    weights = jnp.full(timesteps, 1 / timesteps) if step_weights is None else step_weights

    def loss_fn(params):
        state = {"batch_stats": variables["batch_stats"]}
        per_step_logits = []
        for t in range(timesteps):
            logits_t, state = model.apply({"params": params, **state}, images[:, t], mode="bptt_step",
                                          mutable=["batch_stats", MEMBRANE])
            if detach_membranes:
                state = {**state, MEMBRANE: jax.lax.stop_gradient(state[MEMBRANE])}
            per_step_logits.append(logits_t)
        if detach_membranes:
            return sum(w * optax.softmax_cross_entropy_with_integer_labels(o, labels).mean()
                       for w, o in zip(weights, per_step_logits))
        return optax.softmax_cross_entropy_with_integer_labels(sum(per_step_logits) / timesteps, labels).mean()

    return jax.jit(jax.value_and_grad(loss_fn))(variables["params"])


@pytest.mark.parametrize("method", ["sltt", "bptt_s"])
def test_step_by_step_methods_equal_autodiff_through_a_plain_loop(method):
    """float64, T = 3, a sequence input, digits_vgg. sltt (SPEC oracle 6): autodiff of
    (1/T) Σ_t CE(o_t, y) through a per-step loop whose carried membranes are stop_gradient.
    bptt_s (its time loop unrolled, its convs' gradients in online.conv): autodiff of
    CE(mean_t o_t, y) through the same loop, membranes not detached."""
    model, variables, images, labels = setup("digits_vgg", batch=3)
    sequence = jax.random.uniform(jax.random.key(5), (3, 3) + images.shape[1:], jnp.float64) * 2
    loss, grads = per_step_loop(model, variables, sequence, labels, 3, detach_membranes=method == "sltt")
    out = step(model, method, variables, sequence, labels, 3)
    np.testing.assert_allclose(out.loss, loss, rtol=1e-12)
    assert relative_error(out.grads, grads) <= 1e-10
    if method == "sltt":
        bptt = step(model, "bptt_s", variables, sequence, labels, 3)
        assert relative_error(out.grads, bptt.grads) > 1e-3  # detaching the membranes does change the gradient


sltt_k_step = jax.jit(methods.step_output, static_argnums=(0, 1), static_argnames=("timesteps", "k"))


def test_sltt_k_with_k_equal_to_t_is_sltt():
    model, variables, images, labels = setup("digits_vgg", batch=4)
    full = step(model, "sltt", variables, images, labels, 3)
    for rng in (jax.random.key(0), jax.random.key(1)):
        out = sltt_k_step("sltt_k", model, variables, images, labels, timesteps=3, rng=rng, k=3)
        np.testing.assert_allclose(out.loss, full.loss, rtol=1e-12)
        assert relative_error(out.grads, full.grads) <= 1e-12
        assert relative_error(out.batch_stats, full.batch_stats) <= 1e-12


@pytest.mark.slow  # 3 per-step loops and 8 sltt_k steps (10 s)
def test_sltt_k_backpropagates_the_drawn_steps_only():
    """K = 1: the gradient is T · (the gradient of the drawn step alone); the same key draws
    the same step; the forward (logits, running statistics) is sltt's whatever the draw."""
    model, variables, images, labels = setup("digits_vgg", batch=4)
    sequence = jax.random.uniform(jax.random.key(5), (4, 3) + images.shape[1:], jnp.float64) * 2
    full = step(model, "sltt", variables, sequence, labels, 3)
    one_step = [per_step_loop(model, variables, sequence, labels, 3, detach_membranes=True,
                              step_weights=jnp.arange(3) == t) for t in range(3)]  # step t's loss only
    drawn = set()
    for seed in range(4):
        rng = jax.random.key(seed)
        out = sltt_k_step("sltt_k", model, variables, sequence, labels, timesteps=3, rng=rng, k=1)
        t = int(jax.random.choice(rng, 3, (1,), replace=False)[0])
        loss, grads = one_step[t]
        np.testing.assert_allclose(out.loss, loss, rtol=1e-12)
        assert relative_error(out.grads, grads) <= 1e-12
        again = sltt_k_step("sltt_k", model, variables, sequence, labels, timesteps=3, rng=rng, k=1)
        jax.tree.map(np.testing.assert_array_equal, out.grads, again.grads)
        np.testing.assert_allclose(out.logits, full.logits, rtol=1e-12)
        assert relative_error(out.batch_stats, full.batch_stats) <= 1e-12
        drawn.add(t)
    assert len(drawn) > 1  # different keys draw different steps


def test_sltt_k_needs_rng_and_a_valid_k():
    model, variables, images, labels = setup("digits_vgg", batch=2)
    with pytest.raises(ValueError, match="method sltt_k needs rng"):
        rbp.compute_grads("sltt_k", model, variables, images, labels, timesteps=2, k=1)
    for k in (0, 3, 1.0):
        with pytest.raises(ValueError, match="k must be an integer with 1 <= k <= timesteps"):
            rbp.compute_grads("sltt_k", model, variables, images, labels, timesteps=2, rng=jax.random.key(0), k=k)


class DenseLIFDense(nn.Module):
    """x [..., 1, 1, 3] (real-valued) -> dense -> LIF -> dense -> logits [..., 4]."""

    @nn.compact
    def __call__(self, x, *, mode):
        L = Layers(param_dtype=jnp.float64, dtype=jnp.float64)
        x = x.reshape(x.shape[:-3] + (3,))
        h = L.lif("lif")(L.dense(5, in_features=3, spiking_input=False, name="fc1")(x, mode), mode)
        return L.dense(4, in_features=5, name="fc2")(h, mode)


def ottt_numpy(params, x, labels, decay=0.2, threshold=1.0, alpha=4.0):
    """OTTT_A (SPEC §3.4) on DenseLIFDense, written out in NumPy: x [B, T, 3], labels [B].

    Returns (objective (1/T) Σ_t CE(o_t, y), grads): per step, δ_t = (softmax(o_t) − onehot)/(B·T)
    at the output; fc2's weight gradient from the trace â_t = λ â_{t−1} + s_t of its input; the
    surrogate at u_t; v_{t−1} a constant; fc1 (fed by the input) from x_t itself."""
    p = {k: {n: np.asarray(a) for n, a in v.items()} for k, v in params.items()}
    batch, steps, _ = x.shape
    grads = {k: {n: np.zeros_like(a) for n, a in v.items()} for k, v in p.items()}
    v, trace, loss = np.zeros((batch, 5)), np.zeros((batch, 5)), 0.0
    onehot = np.eye(4)[labels]
    for t in range(steps):
        u = decay * v + x[:, t] @ p["fc1"]["kernel"] + p["fc1"]["bias"]
        s = (u >= threshold).astype(np.float64)
        v = u - threshold * s
        trace = decay * trace + s
        logits = s @ p["fc2"]["kernel"] + p["fc2"]["bias"]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        loss += -np.mean(np.log(probs[np.arange(batch), labels])) / steps
        delta = (probs - onehot) / (batch * steps)
        grads["fc2"]["kernel"] += trace.T @ delta
        grads["fc2"]["bias"] += delta.sum(0)
        sig = 1 / (1 + np.exp(-alpha * (u - threshold)))
        delta_u = (delta @ p["fc2"]["kernel"].T) * alpha * sig * (1 - sig)
        grads["fc1"]["kernel"] += x[:, t].T @ delta_u
        grads["fc1"]["bias"] += delta_u.sum(0)
    return loss, grads


def test_oracle7_ottt_equals_the_trace_formula_in_numpy():
    """SPEC oracle 7, float64, T = 5: ottt on dense → LIF → dense == the NumPy loop."""
    model = DenseLIFDense()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 1.0, (6, 5, 1, 1, 3)))  # [B, T, 1, 1, 3]: a sequence
    labels = jnp.asarray(rng.integers(0, 4, 6))
    params = jax.tree.map(lambda a: a * 3, model.init(jax.random.key(0), x[:, 0], mode="eval")["params"])
    variables = {"params": params, "batch_stats": {}}
    out = step(model, "ottt", variables, x, labels, 5)
    loss, grads = ottt_numpy(params, np.asarray(x)[:, :, 0, 0], np.asarray(labels))
    np.testing.assert_allclose(out.loss, loss, rtol=1e-12)
    assert relative_error(out.grads, grads) <= 1e-10
    sltt = step(model, "sltt", variables, x, labels, 5)
    np.testing.assert_allclose(out.grads["fc1"]["kernel"], sltt.grads["fc1"]["kernel"], rtol=1e-12)  # input-fed
    assert relative_error(out.grads["fc2"], sltt.grads["fc2"]) > 1e-2  # fed by spikes: from their trace


@pytest.mark.slow  # test_own_model's fast oracle 5 covers bptt_remat on a marked block
@pytest.mark.parametrize("name", ["vgg11", "resnet18", "sew_resnet34"])
def test_oracle5_bptt_remat_equals_bptt_m(name):
    """SPEC oracle 5, float64, T = 4: recomputing the blocks changes no number (16×16 inputs)."""
    model, variables, images, labels = setup(name, batch=2)
    remat, bptt = (step(model, m, variables, images, labels, 4) for m in ("bptt_remat", "bptt_m"))
    np.testing.assert_allclose(remat.loss, bptt.loss, rtol=1e-12)
    assert relative_error(remat.grads, bptt.grads) <= 1e-10
    assert relative_error(remat.batch_stats, bptt.batch_stats) <= 1e-12


def compiled_temp_bytes(name, method, timesteps, **create_kwargs):
    """XLA's compiled temporaries of one step (32×32, batch 8, float32); compiled, not run.
    create_kwargs: more arguments of models.create."""
    model = models.create(name, num_classes=10, **create_kwargs)
    images = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((8,), jnp.int32)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), jnp.zeros(images.shape), timesteps=1))
    return analysis.step_cost(model, method, variables, images, labels, timesteps=timesteps, run=False).temp_bytes


@pytest.mark.slow  # compiles ResNet-18 at two T
@pytest.mark.parametrize("method", ["sltt", "ottt"])
def test_online_memory_is_flat_in_timesteps(method):
    """resnet18: T = 8 within 5% of T = 2 (bptt_m's grows ~3×)."""
    t2, t8 = compiled_temp_bytes("resnet18", method, 2), compiled_temp_bytes("resnet18", method, 8)
    assert t8 <= 1.05 * t2, (t2, t8)


@pytest.mark.slow  # compiles VGG-11 twice
def test_bptt_remat_needs_at_most_0_6_of_bptt_m_memory():
    """vgg11 at T = 6."""
    remat, bptt = compiled_temp_bytes("vgg11", "bptt_remat", 6), compiled_temp_bytes("vgg11", "bptt_m", 6)
    assert remat <= 0.6 * bptt, (remat, bptt)


def test_layers_know_the_ottt_mode_only():
    """A Conv fed by spikes keeps a trace in "ottt_step" only; the encoding conv never."""
    model, variables, images, labels = setup("digits_vgg", batch=2)
    _, state = model.apply(variables, images, mode="ottt_step", mutable=True)
    assert set(state[layers.TRACE]) == {"conv1", "conv2", "classifier"}  # not conv0: it reads the image
    _, state = model.apply(variables, images, mode="bptt_step", mutable=True)
    assert layers.TRACE not in state
