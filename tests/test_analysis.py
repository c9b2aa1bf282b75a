"""analysis: layer order, cosines, firing rates against the spike pass's record, step cost."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ratebp_jax import analysis, layers, models
from test_methods import setup
from test_online_methods import compiled_temp_bytes


def test_call_order_is_network_order_not_alphabetical():
    model = models.create("resnet18", num_classes=10)
    images = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), images, timesteps=1))
    order = analysis.call_order(model, variables, images, timesteps=2, kinds=(nn.Conv, nn.Dense))
    assert order[0] == "conv0" and order[-1] == "classifier" and len(order) == 21  # stem, 16 block convs, 3 shortcuts, linear
    assert order.index("layer1_0/conv1") < order.index("layer1_0/conv2") < order.index("layer2_0/conv1")
    assert order != sorted(order)
    flat = {"/".join(k.key for k in path[:-1]) for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])}
    assert set(order) <= flat


def test_cosine_of_trees():
    a = {"w": np.array([[1.0, 2.0]]), "b": np.array([3.0])}
    assert analysis.cosine(a, a) == pytest.approx(1.0)
    assert analysis.cosine(a, jax.tree.map(lambda x: -2 * x, a)) == pytest.approx(-1.0)
    assert analysis.cosine({"w": np.array([1.0, 0.0])}, {"w": np.array([0.0, 5.0])}) == pytest.approx(0.0)
    b = {"w": np.array([[0.5, -1.0]]), "b": np.array([2.0])}
    flat_a, flat_b = np.array([3.0, 1.0, 2.0]), np.array([2.0, 0.5, -1.0])  # leaves in tree order: b, w
    expected = flat_a @ flat_b / np.linalg.norm(flat_a) / np.linalg.norm(flat_b)
    assert analysis.cosine(a, b) == pytest.approx(expected)


@pytest.mark.slow  # bptt and rate gradients at T = 1 and 4
def test_grad_similarity_is_one_at_one_timestep_and_below_one_later():
    """Oracle 1 seen through the experiment: at T = 1 every layer's cosine is 1."""
    model, variables, images, labels = setup("digits_vgg", batch=8)
    at_1 = analysis.grad_similarity(model, variables, images, labels, timesteps=1)
    at_4 = analysis.grad_similarity(model, variables, images, labels, timesteps=4)
    for pair in (("rate_m", "bptt_m"), ("rate_s", "bptt_s")):
        assert list(at_1[pair]) == ["overall", "conv0", "conv1", "conv2", "classifier"]
        np.testing.assert_allclose(list(at_1[pair].values()), 1.0, atol=1e-10)
        assert 0 < at_4[pair]["overall"] < 1 - 1e-6


@pytest.mark.slow  # compiles the spike pass and the analysis
def test_firing_rates_agree_with_the_rates_the_spike_pass_records():
    """Per layer, the time-mean of firing_rates(mode="spike") is the mean of RECORD's rate."""
    model, variables, images, _ = setup("digits_vgg", batch=8)
    images = images * 4
    rates = analysis.firing_rates(model, variables, images, timesteps=5, mode="spike")
    _, state = model.apply(variables, jnp.broadcast_to(images, (5,) + images.shape), mode="spike",
                           mutable=["batch_stats", layers.RECORD])
    assert list(rates) == ["spike0", "spike1", "spike2"]
    for layer, per_step in rates.items():
        assert per_step.shape == (5,) and np.all((per_step >= 0) & (per_step <= 1))
        recorded = float(jnp.mean(state[layers.RECORD][layer]["rate"]))
        np.testing.assert_allclose(per_step.mean(), recorded, rtol=1e-12)
    assert 0 < rates["spike0"].mean() < 1
    eval_rates = analysis.firing_rates(model, variables, images, timesteps=5)  # running statistics
    assert not np.allclose(eval_rates["spike0"], rates["spike0"])


@pytest.mark.slow  # compiles four steps (about 20 s)
def test_rate_s_memory_is_flat_in_timesteps():
    """digits_vgg at 32×32: rate_s at T = 8 needs within 5% of its T = 2 compiled memory; bptt_m's grows
    with T. (At T = 1 rate_s keeps float sums and needs less: README, "Cost of one training step".)"""
    rate_s, bptt_m = ([compiled_temp_bytes("digits_vgg", method, t, in_channels=3) for t in (2, 8)]
                      for method in ("rate_s", "bptt_m"))
    assert rate_s[1] <= 1.05 * rate_s[0], rate_s
    assert bptt_m[1] >= 2 * bptt_m[0], bptt_m


@pytest.mark.slow  # compiles ResNet-18's rate_m step at 2 T
def test_rate_m_memory_grows_by_about_one_layer_per_time_step():
    """SPEC §4: rate_m's memory ∝ B·(sum of layer sizes) + T·B·(largest layer). resnet18, batch 8:
    each step from T = 2 to 8 adds at most 4 copies of the largest layer [8, 32, 32, 64]
    (a scan's stacked spikes, all allocated at the program's start, added 10)."""
    t2, t8 = (compiled_temp_bytes("resnet18", "rate_m", t) for t in (2, 8))
    largest_layer = 8 * 32 * 32 * 64 * 4
    assert (t8 - t2) / 6 <= 4 * largest_layer, (t2, t8)


def test_step_cost_times_the_step():
    model, variables, images, labels = setup("digits_vgg", dtype=jnp.float32, batch=4)
    cost = analysis.step_cost(model, "rate_m", variables, images, labels, timesteps=2, repeats=2)
    assert cost.step_time_s > 0 and cost.temp_bytes > 0 and cost.peak_bytes is None  # CPU: no allocator stats
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(variables))
    assert cost.argument_bytes >= params_bytes + images.nbytes
    forward = analysis.forward_step_cost(model, variables, images, run=False)
    assert forward.step_time_s is None and 0 < forward.temp_bytes < cost.temp_bytes


def test_cost_sweep_stops_timing_a_method_once_a_step_is_slower_than_max_step_s():
    """Any measure(method, T, run) serves: here a fake whose step takes T seconds."""
    calls = []

    def measure(method, t, run):
        calls.append((method, t, run))
        return analysis.StepCost(float(t) if run else None, 100 * t, 1, 2, None)

    rows = analysis.cost_sweep(measure, timesteps=[4, 1, 2], methods=["rate_m", "bptt_m"], max_step_s=1.5)
    assert calls == [("forward", 1, True), ("rate_m", 1, True), ("rate_m", 2, True), ("rate_m", 4, False),
                     ("bptt_m", 1, True), ("bptt_m", 2, True), ("bptt_m", 4, False)]
    assert rows[3] == {"method": "rate_m", "timesteps": 4, "step_time_s": None, "compiled_temp_bytes": 400,
                       "argument_bytes": 1, "output_bytes": 2, "peak_bytes": None}


def test_measure_in_process_measures_a_method_or_the_forward_step():
    model, variables, images, labels = setup("digits_vgg", dtype=jnp.float32, batch=4)
    measure = analysis.measure_in_process(model, variables, images, labels, repeats=1)
    step, forward = measure("rate_m", 2, False), measure("forward", 1, False)
    assert step.step_time_s is None and forward.step_time_s is None
    assert step == analysis.step_cost(model, "rate_m", variables, images, labels, timesteps=2, run=False)
    assert 0 < forward.temp_bytes < step.temp_bytes
