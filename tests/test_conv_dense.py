"""layers.Conv and layers.Dense against flax's nn.Conv and nn.Dense in every mode (float64),
online.conv's two gradient forms, and the arguments Conv refuses."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ratebp_jax import layers, online
from test_methods import relative_error

PLAIN_MODES = ("eval", "bptt", "bptt_remat", "spike", "rate", "spike_step")  # nn.Conv / nn.Dense itself
DECAY = 0.3  # the presynaptic trace's λ

# (constructor arguments, input shape): every argument Conv supports, on tiny inputs
CONV_CASES = {
    "same": (dict(kernel_size=(3, 3)), (2, 7, 6, 4)),
    "valid_strided": (dict(kernel_size=(3, 3), strides=2, padding="VALID"), (2, 7, 6, 4)),
    "pairs": (dict(kernel_size=(3, 2), strides=(2, 1), padding=((2, 0), (1, 1))), (2, 7, 6, 4)),
    "dilated": (dict(kernel_size=(3, 3), kernel_dilation=2, padding=1), (2, 7, 6, 4)),
    "groups_no_bias": (dict(kernel_size=(3, 3), feature_group_count=2, use_bias=False, padding=[1, (0, 2)]),
                       (2, 7, 6, 4)),
    "all_at_once": (dict(kernel_size=(2, 3), strides=(2, 1), kernel_dilation=(1, 2), feature_group_count=2,
                         padding="SAME_LOWER"), (2, 7, 6, 4)),
    "circular": (dict(kernel_size=(3, 3), strides=2, padding="CIRCULAR"), (2, 7, 6, 4)),
    "reflect_dilated": (dict(kernel_size=(3, 3), kernel_dilation=(2, 1), padding="REFLECT"), (2, 7, 6, 4)),
    "masked": (dict(kernel_size=(3, 3), mask=np.tril(np.ones((3, 3, 4, 6)))), (2, 7, 6, 4)),
    "causal_1d_leading_axes": (dict(kernel_size=(3,), kernel_dilation=2, padding="CAUSAL"), (2, 2, 9, 4)),
}


def assert_close(actual, expected, rtol=1e-10, label=""):
    """Same tree, and every leaf within rtol of expected (relative to its norm)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected), label
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == b.shape and a.dtype == b.dtype, label
        assert relative_error(a, b) <= rtol, label


def check_plain_modes(ours, theirs, x):
    """ours initialises as theirs (names, shapes, initialisers), and in the modes without a
    gradient form of their own it traces to theirs' program: the same values and gradients."""
    key = jax.random.key(0)
    assert jax.eval_shape(ours.init, key, x) == jax.eval_shape(theirs.init, key, x)
    assert str(jax.make_jaxpr(ours.init)(key, x)) == str(jax.make_jaxpr(theirs.init)(key, x))
    params = jax.eval_shape(theirs.init, key, x)["params"]
    expected = str(jax.make_jaxpr(lambda p, x: theirs.apply({"params": p}, x))(params, x))
    for mode in PLAIN_MODES:
        ours_fn = lambda p, x: ours.apply({"params": p}, x, mode=mode, mutable=True)[0]
        assert str(jax.make_jaxpr(ours_fn)(params, x)) == expected, mode


def check_step_modes(ours, theirs, x, rtol=1e-10):
    """ours(x, mode) == theirs(x) in the step modes with gradients, values and gradients
    (params, input) within rtol; in "ottt_step" the weight gradient of a layer fed by
    spikes is autodiff's at the presynaptic trace of its input (DECAY · previous + x)."""
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype),
                          jax.eval_shape(theirs.init, jax.random.key(0), x)["params"])
    previous = jnp.asarray(rng.normal(size=x.shape), x.dtype)  # the step before x, in "ottt_step"
    flax_fn = lambda p, x: theirs.apply({"params": p}, x)
    out = jax.eval_shape(flax_fn, params, x)
    out_weights = jnp.asarray(rng.normal(size=out.shape), out.dtype)

    def value_and_grads(fn, x):  # fn(params, x) -> y; the gradients of Σ y · out_weights
        return fn(params, x), jax.grad(lambda p, x: jnp.sum(fn(p, x) * out_weights), (0, 1))(params, x)

    def ottt_step(layer):  # the second of two steps
        _, state = layer.apply({"params": params}, previous, mode="ottt_step", mutable=[layers.TRACE])
        return lambda p, x: layer.apply({"params": p, **state}, x, mode="ottt_step", mutable=[layers.TRACE])[0]

    @jax.jit  # one program, one compilation
    def results():
        expected, (params_grad, input_grad) = value_and_grads(flax_fn, x)
        _, (trace_params_grad, _) = value_and_grads(flax_fn, DECAY * previous + x)
        bptt_step = value_and_grads(lambda p, x: ours.apply({"params": p}, x, mode="bptt_step"), x)
        ottt = ours.clone(trace_decay=DECAY)
        return ({"bptt_step": bptt_step,
                 "ottt_step": value_and_grads(ottt_step(ottt.clone(spiking_input=True)), x),
                 "ottt_step on real input": value_and_grads(ottt_step(ottt.clone(spiking_input=False)), x)},
                {"bptt_step": (expected, (params_grad, input_grad)),
                 "ottt_step": (expected, (trace_params_grad, input_grad)),
                 "ottt_step on real input": (expected, (params_grad, input_grad))})

    actual, expected = results()
    for mode in actual:
        assert_close(actual[mode], expected[mode], rtol, label=mode)


def conv_case(case, **ours_kwargs):
    kwargs, shape = CONV_CASES[case]
    kwargs = dict(features=6, param_dtype=jnp.float64, **kwargs)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape))
    return layers.Conv(**kwargs, **ours_kwargs), nn.Conv(**kwargs), x


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_is_flax_in_the_plain_modes(case):
    check_plain_modes(*conv_case(case))


@pytest.mark.parametrize("case,conv_gradients", [
    *((case, "native_layouts") for case in CONV_CASES),
    # autodiff's form is jax's own: the layer's part (padding, groups, leading axes) checked on a few
    *((case, "autodiff") for case in ("same", "all_at_once", "causal_1d_leading_axes"))])
def test_conv_equals_flax_in_the_step_modes(case, conv_gradients):
    """Values and gradients (params, input) within 1e-10 of nn.Conv's, float64, with either
    gradient form ("auto" is one of them: test_auto_writes_native_layouts_for_cpu_only)."""
    check_step_modes(*conv_case(case, conv_gradients=conv_gradients))


@pytest.mark.parametrize("conv_gradients", ["native_layouts", "autodiff"])
def test_conv_keeps_flax_dtypes_in_the_step_modes(conv_gradients):
    """dtype bfloat16 with float32 parameters and input: nn.Conv's dtypes, values and
    gradients (to bfloat16's rounding: the two gradient forms sum in other orders)."""
    kwargs = dict(features=6, kernel_size=(3, 3), strides=2, dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 6, 4)), jnp.float32)
    check_step_modes(layers.Conv(**kwargs, conv_gradients=conv_gradients), nn.Conv(**kwargs), x, rtol=1e-2)


@pytest.mark.parametrize("kwargs,shape", [(dict(), (3, 5)), (dict(use_bias=False), (3, 5)),
                                          (dict(precision="highest"), (2, 3, 5))])
def test_dense_equals_flax_in_every_mode(kwargs, shape):
    kwargs = dict(features=4, param_dtype=jnp.float64, **kwargs)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape))
    check_plain_modes(layers.Dense(**kwargs), nn.Dense(**kwargs), x)
    check_step_modes(layers.Dense(**kwargs), nn.Dense(**kwargs), x)


def conv_dim_numbers(conv_gradients, platform):
    """The dimension numbers of the convolutions in a conv's gradient, lowered for platform."""
    x, kernel = jnp.ones((2, 6, 6, 4), jnp.float32), jnp.ones((3, 3, 4, 5), jnp.float32)
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(online.conv(x, k, x, strides=(2, 2), padding="SAME",
                                                             gradients=conv_gradients)), (0, 1)))
    text = grad.trace(x, kernel).lower(lowering_platforms=(platform,)).as_text()
    return sorted(re.findall(r"dim_numbers = (\S+),", text))


def test_auto_writes_native_layouts_for_cpu_only():
    """"auto" is decided by the lowering platform: XLA:CPU's native layouts when lowered for
    the CPU, autodiff's form when lowered for a GPU (lowered here, not run)."""
    native, autodiff = conv_dim_numbers("native_layouts", "cpu"), conv_dim_numbers("autodiff", "cpu")
    assert native != autodiff
    assert conv_dim_numbers("auto", "cpu") == native
    assert conv_dim_numbers("auto", "cuda") == autodiff == conv_dim_numbers("autodiff", "cuda")


class Named(nn.Module):
    conv_kwargs: dict

    @nn.compact
    def __call__(self, x, mode):
        return layers.Conv(3, (3, 3), name="conv1", **self.conv_kwargs)(x, mode)


@pytest.mark.parametrize("kwargs,argument", [
    (dict(input_dilation=2), "input_dilation"),
    (dict(input_dilation=(1, 2)), "input_dilation"),
    (dict(conv_general_dilated=jax.lax.conv_general_dilated), "conv_general_dilated"),
    (dict(conv_gradients="fast"), "conv_gradients"),
])
@pytest.mark.parametrize("mode", ["eval", "bptt_step"])
def test_conv_refuses_what_the_step_modes_cannot_compute(kwargs, argument, mode):
    """One ValueError at the first call, in every mode, naming the argument and the layer."""
    with pytest.raises(ValueError, match=rf"^Conv 'conv1': {argument}\b") as error:
        Named(kwargs).init(jax.random.key(0), jnp.ones((1, 5, 5, 2)), mode=mode)
    assert "\n" not in str(error.value)
