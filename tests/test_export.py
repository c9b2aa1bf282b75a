"""ratebp_jax.export: the NIR graph round-trips, folds BatchNorm exactly, refuses what NIR cannot
express in one line, and an independent simulator (snnTorch) runs it as we do.

The simulator is snnTorch 1.0.0 (pinned in requirements.txt with nirtorch 2.6 and torch 2.13.0's
CPU build): a released package of the field whose NIR import reads Conv2d, AvgPool2d, Flatten,
Affine and LIF graphs, sums a node's input edges (residual additions) and resets to zero as NIR's
LIF does. Norse 1.1.0 ships only as a source archive that compiles against torch. The simulator
tests skip, saying why, where snnTorch is not installed.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

nir = pytest.importorskip("nir")

from ratebp_jax import export, layers, models  # noqa: E402
from ratebp_jax.models import common  # noqa: E402
from ratebp_jax.neuron import LIFParams  # noqa: E402

HARD = LIFParams(reset="hard")


def _reader():
    """(torch, snntorch, import_from_nir), or a skip naming what is missing."""
    try:
        import snntorch
        import torch
        from snntorch.import_nir import import_from_nir
    except ImportError as error:
        pytest.skip(f"the NIR reader snnTorch is not installed ({error}); pip install -r requirements.txt")
    torch.set_num_threads(2)
    return torch, snntorch, import_from_nir


def snntorch_network(graph: nir.NIRGraph):
    """snnTorch's network for ``graph``, with the reader's two quirks adapted here, not in the graph:
    - snnTorch 1.0.0 takes dt = 1e-4 s for every LIF (beta = 1 − 1e-4/τ, input gain R·1e-4/τ): the
      reader gets the same dynamics in its time unit, τ scaled by 1e-4/dt (R = τ/dt is unchanged, so
      beta = λ and the gain stays 1);
    - it maps nir.Flatten(start_dim, end_dim), which count no batch axis, to torch.nn.Flatten
      unchanged, which would flatten the batch too: the reader gets the dims shifted by one.
    Returns (net, {node name: snnTorch neuron}).
    """
    torch, snntorch, import_from_nir = _reader()
    graph = copy.deepcopy(graph)
    dt = float(graph.metadata["dt"])
    for node in graph.nodes.values():
        if isinstance(node, nir.LIF):
            node.tau = node.tau * (1e-4 / dt)
        if isinstance(node, nir.Flatten):
            node.start_dim += 1
            node.end_dim = node.end_dim if node.end_dim < 0 else node.end_dim + 1
    net = import_from_nir(graph)
    neurons = {name: module for name, module in net.named_modules() if isinstance(module, snntorch.Leaky)}
    return net, neurons


def simulate(graph: nir.NIRGraph, images: np.ndarray, timesteps: int, record: tuple[str, ...] = ()):
    """snnTorch on ``images`` [B, H, W, C] (normalised) presented at each of T steps:
    (mean output over T [B, classes], {neuron: spikes [T, B, C, H, W] or [T, B, N]}).
    record: neuron names (dots as underscores, as nirtorch names modules); all if empty."""
    torch, _, _ = _reader()
    net, neurons = snntorch_network(graph)
    record = record or tuple(neurons)
    spikes = {name: [] for name in record}
    hooks = [neurons[name].register_forward_hook(lambda m, i, out, name=name: spikes[name].append(out.numpy()))
             for name in record]
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32))
    for neuron in neurons.values():
        neuron.mem = torch.zeros(0)  # a fresh potential (zeros of the input's shape) for this batch
    outputs = []
    with torch.no_grad():
        for _ in range(timesteps):
            out = net(x)
            outputs.append((out[0] if isinstance(out, tuple) else out).numpy())
    for hook in hooks:
        hook.remove()
    return np.mean(outputs, axis=0), {name: np.stack(s) for name, s in spikes.items()}


def ours(model, variables, images: np.ndarray, timesteps: int):
    """(time-mean logits [B, classes], {LIF path with underscores: spikes in NIR's layout [T, B, C, ...]})."""
    x = jnp.broadcast_to(jnp.asarray(images), (timesteps,) + images.shape)
    logits, state = model.apply({c: variables[c] for c in ("params", "batch_stats") if c in variables}, x,
                                mode="eval", mutable=["intermediates"],
                                capture_intermediates=lambda module, method: isinstance(module, layers.LIF))
    spikes = {}
    for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey) and k.key != "__call__"]
        s = np.asarray(value)
        spikes["_".join(names)] = s.transpose(0, 1, 4, 2, 3) if s.ndim == 5 else s
    return np.asarray(logits.mean(axis=0)), spikes


class SmallNet(nn.Module):
    """A user model of the public layers: conv-BN-LIF, a lone BatchNorm, an average pool, a
    residual sum, a flatten, dense-BN-LIF and a classifier; optionally a max-pool."""

    neuron: LIFParams = HARD
    max_pool: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, mode):
        kw = dict(dtype=self.dtype, param_dtype=self.dtype)
        y = layers.Conv(6, (3, 3), padding=((1, 1), (1, 1)), name="conv", **kw)(x, mode)
        y = layers.LIF(self.neuron, name="lif0")(layers.BatchNorm(name="bn", **kw)(y, mode), mode)
        if self.max_pool:
            y = nn.max_pool(y, (2, 2), (2, 2))
        else:
            y = nn.avg_pool(y, (2, 2), (2, 2))
        z = layers.Conv(6, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv2", **kw)(y, mode)
        y = layers.LIF(self.neuron, name="lif1")(layers.BatchNorm(name="lone_bn", **kw)(y, mode) + z, mode)
        y = y.reshape(y.shape[:-3] + (-1,))
        dense = layers.Dense(12, kernel_init=nn.initializers.normal(1.0), name="dense", **kw)
        y = layers.BatchNorm(name="dense_bn", **kw)(dense(y, mode), mode)
        return layers.Dense(5, name="classifier", **kw)(layers.LIF(self.neuron, name="lif2")(y, mode), mode)


def _small(key=0, dtype=jnp.float32, **kwargs):
    """SmallNet on [6, 6, 2] inputs with running statistics moved away from (0, 1)."""
    model = SmallNet(dtype=dtype, **kwargs)
    x = jax.random.normal(jax.random.key(key), (2, 4, 6, 6, 2), dtype) * 2 + 0.5
    variables = jax.jit(lambda x: model.init(jax.random.key(key + 1), x, mode="eval"))(x)
    step = jax.jit(lambda variables: model.apply(variables, x, mode="bptt", mutable=["batch_stats"])[1])
    for _ in range(3):
        variables = {"params": variables["params"], "batch_stats": step(variables)["batch_stats"]}
    return model, variables


class AdaptiveNet(nn.Module):
    """conv-BN-LIF, PyTorch's AdaptiveAvgPool2d((3, 3)) (as vggsnn_cifar), flatten, dense-LIF, classifier."""

    @nn.compact
    def __call__(self, x, *, mode):
        y = layers.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x, mode)
        y = layers.LIF(HARD, name="lif0")(layers.BatchNorm(name="bn")(y, mode), mode)
        y = common.flatten(common.adaptive_avg_pool(y, 3))
        y = layers.LIF(HARD, name="lif1")(layers.Dense(8, kernel_init=nn.initializers.normal(1.0), name="dense")(
            y, mode), mode)
        return layers.Dense(3, name="classifier")(y, mode)


@pytest.mark.slow  # snnTorch (torch's import and its simulation)
@pytest.mark.parametrize("side, pool", [(4, "AvgPool2d"), (5, None)])
def test_adaptive_pooling_is_a_pool_or_folds_into_the_classifier(side, pool):
    """On 4×4 the 3×3 adaptive pool is AvgPool2d(2, stride 1); on 5×5 its windows differ in size, and
    the pool (a fixed linear map) folds into the next Dense's nir.Affine. snnTorch agrees with us."""
    model = AdaptiveNet()
    images = np.asarray(jax.random.normal(jax.random.key(3), (8, side, side, 2), jnp.float32) + 0.5)
    variables = model.init(jax.random.key(4), images[None], mode="eval")
    graph = export.to_nir(model, variables, input_shape=(side, side, 2), timesteps=2)
    pools = [type(n).__name__ for n in graph.nodes.values() if isinstance(n, (nir.AvgPool2d, nir.SumPool2d))]
    assert pools == ([pool] if pool else [])
    assert graph.nodes["dense"].weight.shape == (8, 4 * 9 if pool else 4 * side * side)
    logits, spikes = ours(model, variables, images, 2)
    theirs, their_spikes = simulate(graph, images, 2)
    assert spikes["lif1"].mean() > 0.01
    for name in ("lif0", "lif1"):
        assert np.mean(spikes[name] == their_spikes[name]) >= 0.999, name
    np.testing.assert_allclose(theirs, logits, atol=1e-4)


def test_nir_write_read_round_trip_of_the_digits_model(tmp_path):
    model = models.create("digits_vgg", num_classes=10, in_channels=1, reset="hard")
    variables = models.init(model, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), timesteps=4)
    graph = export.to_nir(model, variables, input_shape=(8, 8, 1), timesteps=4)
    assert [type(n).__name__ for n in graph.nodes.values()] == [
        "Input", "Conv2d", "LIF", "Conv2d", "LIF", "AvgPool2d", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine",
        "Output"]
    assert graph.metadata["dt"] == export.DEFAULT_DT and graph.metadata["timesteps"] == 4
    np.testing.assert_array_equal(graph.nodes["input"].output_type["output"], [1, 8, 8])
    np.testing.assert_array_equal(graph.nodes["output"].input_type["input"], [10])
    lif = graph.nodes["spike0"]
    np.testing.assert_allclose(1 - export.DEFAULT_DT / lif.tau, 0.2)   # the Euler step's decay is λ
    np.testing.assert_allclose(lif.r * export.DEFAULT_DT / lif.tau, 1)  # unit input gain
    path = tmp_path / "digits.nir"
    nir.write(path, graph)
    read = nir.read(path)
    assert sorted(read.nodes) == sorted(graph.nodes)  # HDF5 keeps groups in name order
    assert sorted(read.edges) == sorted(graph.edges)
    assert {k: v for k, v in read.metadata.items()} == graph.metadata
    for name, node in graph.nodes.items():
        other = read.nodes[name]
        assert type(other) is type(node), name
        for key in ("input_type", "output_type"):
            for a, b in zip(getattr(node, key).values(), getattr(other, key).values()):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}.{key}")
        for field, value in vars(node).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(other, field), value, err_msg=f"{name}.{field}")


def _conv_nchw(x, node):
    """A nir.Conv2d applied to x [B, C, H, W] in float64 (NIR's definition, PyTorch's semantics)."""
    pad = [(int(p), int(p)) for p in node.padding]
    y = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(node.weight), tuple(node.stride), pad,
                                     rhs_dilation=tuple(node.dilation), feature_group_count=int(node.groups),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + jnp.asarray(node.bias)[:, None, None]


def _rel_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_batchnorm_folding_is_exact_in_float64():
    model, variables = _small(dtype=jnp.float64)
    graph = export.to_nir(model, variables, input_shape=(6, 6, 2), timesteps=2)
    assert "bn" not in graph.nodes and "dense_bn" not in graph.nodes  # folded into conv and dense
    assert isinstance(graph.nodes["lone_bn"], nir.Conv2d)
    x = np.asarray(jax.random.normal(jax.random.key(5), (1, 3, 6, 6, 2), jnp.float64))
    _, state = model.apply(variables, x, mode="eval", mutable=["intermediates"],
                           capture_intermediates=lambda m, _: isinstance(m, layers.BatchNorm))
    inter = state["intermediates"]
    folded = _conv_nchw(x[0].transpose(0, 3, 1, 2), graph.nodes["conv"])
    assert _rel_error(folded, inter["bn"]["__call__"][0][0].transpose(0, 3, 1, 2)) <= 1e-12
    # the lone BatchNorm's 1×1 conv on a pooled spike map
    y = (jax.random.uniform(jax.random.key(6), (3, 6, 3, 3)) < 0.3).astype(jnp.float64)
    bn = graph.nodes["lone_bn"]
    lone = {c: variables[c]["lone_bn"] for c in ("params", "batch_stats")}
    expected = layers.BatchNorm(dtype=jnp.float64, param_dtype=jnp.float64).apply(lone, y.transpose(0, 2, 3, 1),
                                                                                  "eval")
    assert _rel_error(_conv_nchw(y, bn), np.asarray(expected).transpose(0, 3, 1, 2)) <= 1e-12


def test_a_soft_reset_model_needs_the_explicit_argument():
    model, variables = _small(neuron=LIFParams())
    with pytest.raises(export.ExportError) as error:
        export.to_nir(model, variables, input_shape=(6, 6, 2), timesteps=2)
    message = str(error.value)
    assert "\n" not in message and "lif0" in message and "soft reset" in message
    assert "--config.neuron.reset=hard" in message
    graph = export.to_nir(model, variables, input_shape=(6, 6, 2), timesteps=2, reset="soft")
    assert graph.metadata["reset"] == "subtract"
    assert {n.metadata["reset"] for n in graph.nodes.values() if isinstance(n, nir.LIF)} == {"subtract"}


def test_a_max_pool_is_one_error_naming_the_layer():
    model, variables = _small(max_pool=True)
    with pytest.raises(export.ExportError) as error:
        export.to_nir(model, variables, input_shape=(6, 6, 2), timesteps=2)
    message = str(error.value)
    assert "\n" not in message and "max-pooling" in message and "lif0" in message


@pytest.mark.slow  # snnTorch (torch's import and its simulation)
def test_user_model_agrees_with_snntorch():
    model, variables = _small()
    graph = export.to_nir(model, variables, input_shape=(6, 6, 2), timesteps=3)
    images = np.asarray(jax.random.normal(jax.random.key(7), (16, 6, 6, 2), jnp.float32) * 2 + 0.5)
    logits, spikes = ours(model, variables, images, 3)
    theirs, their_spikes = simulate(graph, images, 3)
    for name in ("lif0", "lif1", "lif2"):
        assert spikes[name].mean() > 0.01
        assert np.mean(spikes[name] == their_spikes[name]) >= 0.999, name
    np.testing.assert_allclose(theirs, logits, atol=1e-4)


def _first_block_and_rates(spikes: dict, theirs: dict, first: tuple[str, ...]):
    """(agreement of the ``first`` layers' spike trains, {layer: |our rate − theirs|})."""
    agree = np.mean(np.concatenate([(spikes[n] == theirs[n]).ravel() for n in first]))
    return agree, {n: abs(float(spikes[n].mean()) - float(theirs[n].mean())) for n in spikes}


@pytest.fixture(scope="module")
def hard_digits_run(tmp_path_factory):
    """A short hard-reset digits run (the deployment recipe, 3 epochs): its workdir."""
    from configs import digits_hard
    from ratebp_jax import train

    config = digits_hard.get_config()
    config.num_epochs, config.eval_batch_size, config.log_every_steps = 3, 360, 1000
    workdir = str(tmp_path_factory.mktemp("export") / "digits_hard")
    train.train_and_evaluate(config, workdir)
    return workdir


@pytest.mark.slow
def test_snntorch_runs_the_trained_digits_graph_as_we_do(hard_digits_run, tmp_path):
    """The graph written by experiments.export, read back and run by snnTorch on the 360 test digits."""
    from ratebp_jax import runs

    _reader()
    path = str(tmp_path / "digits.nir")
    command = [sys.executable, "-m", "experiments.export", "--workdir", hard_digits_run, "--out", path]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "exported in" in done.stdout
    model, variables, split, config = runs.load_trained(hard_digits_run)
    batches = [b for b in split.epoch(0)]
    images = np.concatenate([b["image"][b["mask"] > 0] for b in batches]).astype(np.float32)
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    assert len(images) == 360
    logits, spikes = ours(model, variables, images, config.timesteps)
    theirs, their_spikes = simulate(nir.read(path), images, config.timesteps)
    same = np.mean(logits.argmax(-1) == theirs.argmax(-1))
    accuracy, their_accuracy = (100 * np.mean(x.argmax(-1) == labels) for x in (logits, theirs))
    agree, rate_gaps = _first_block_and_rates(spikes, their_spikes, ("spike0",))
    print(f"digits (hard reset, T = {config.timesteps}): same prediction {100 * same:.2f}%, accuracy ours "
          f"{accuracy:.2f}% snnTorch {their_accuracy:.2f}%, first LIF spikes equal {100 * agree:.3f}%, "
          f"largest rate gap {max(rate_gaps.values()):.4f}")
    assert accuracy > 90
    assert same >= 0.995
    assert abs(accuracy - their_accuracy) <= 0.3
    assert agree >= 0.999


@pytest.mark.slow
def test_snntorch_runs_resnet18_as_we_do():
    """Residual edges, strided convs and shortcut convs: resnet18 on random 32×32 images, running
    statistics moved away from (0, 1) by training-mode batches first."""
    _reader()
    model = models.create("resnet18", num_classes=10, reset="hard")
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3), jnp.float32)
    variables = models.init(model, jax.random.key(1), x, timesteps=2)
    # γ = 3: deep layers that fire (at γ = 1 and random weights most of them stay silent)
    variables["params"] = jax.tree_util.tree_map_with_path(
        lambda path, v: v * 3 if path[-1].key == "scale" else v, variables["params"])
    for i in range(2):  # single-step training mode: BatchNorm on the batch's statistics, running ones updated
        batch = jax.random.normal(jax.random.key(2 + i), (4, 32, 32, 3), jnp.float32) * 1.5 + 0.3
        _, updates = model.apply(variables, batch, mode="bptt_step", mutable=["batch_stats", "membrane"])
        variables = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
    stats = variables["batch_stats"]["bn0"]
    assert float(jnp.abs(stats["mean"]).max()) > 0.05 and float(jnp.abs(stats["var"] - 1).max()) > 0.05
    graph = export.to_nir(model, variables, input_shape=(32, 32, 3), timesteps=2)
    images = np.asarray(jax.random.normal(jax.random.key(9), (2, 32, 32, 3), jnp.float32) * 1.5 + 0.3)
    logits, spikes = ours(model, variables, images, 2)
    theirs, their_spikes = simulate(graph, images, 2)
    first = ("spike0", "layer1_0_spike1", "layer1_0_spike2")
    agree, rate_gaps = _first_block_and_rates(spikes, their_spikes, first)
    print(f"resnet18 (hard reset, T = 2): first block's spikes equal {100 * agree:.3f}%, largest rate gap "
          f"{max(rate_gaps.values()):.4f}; rates {[round(float(s.mean()), 3) for s in spikes.values()]}")
    assert len(rate_gaps) == 17 and set(their_spikes) == set(spikes)
    assert agree >= 0.999
    assert max(rate_gaps.values()) <= 0.02
    assert float(spikes["layer4_0_spike2"].mean()) > 0  # the last stage fires too


class GroupedNet(nn.Module):
    """flax-style convs: SAME padding, then a strided grouped conv, a global mean and a classifier."""

    @nn.compact
    def __call__(self, x, *, mode):
        y = layers.LIF(HARD, name="lif0")(layers.Conv(4, (3, 3), padding="SAME", name="conv")(x, mode), mode)
        y = layers.Conv(8, (3, 3), strides=2, padding=1, feature_group_count=2,
                        kernel_init=nn.initializers.normal(1.0), name="grouped")(y, mode)
        return layers.Dense(3, name="out")(jnp.mean(layers.LIF(HARD, name="lif1")(y, mode), axis=(-3, -2)), mode)


@pytest.mark.slow  # snnTorch (torch's import and its simulation)
def test_grouped_strided_convs_and_a_global_mean_agree_with_snntorch():
    """A grouped conv becomes a full nir.Conv2d with zeros between the groups (NIR 1.0.8 types a grouped
    conv's input with C_in/groups channels); BatchNorm-free models have no batch_stats."""
    model = GroupedNet()
    images = np.asarray(jax.random.normal(jax.random.key(0), (5, 6, 6, 2)) + 0.5, np.float32)
    variables = model.init(jax.random.key(1), images[None], mode="eval")
    graph = export.to_nir(model, variables, input_shape=(6, 6, 2), timesteps=2)
    assert graph.nodes["grouped"].weight.shape == (8, 4, 3, 3) and graph.nodes["grouped"].groups == 1
    logits, spikes = ours(model, variables, images, 2)
    theirs, their_spikes = simulate(graph, images, 2)
    for name in ("lif0", "lif1"):
        assert spikes[name].mean() > 0.05 and np.mean(spikes[name] == their_spikes[name]) >= 0.999, name
    np.testing.assert_allclose(theirs, logits, atol=1e-4)
