"""The training system: pmapped step, resume, the CIFAR-10 config on mock data, config errors."""

import importlib
import json
import os
import subprocess
import sys

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conftest
from configs import cifar10_resnet18, common, digits
from ratebp_jax import checkpoint, configuration, data, methods, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_digits_config(**overrides):
    config = digits.get_config()
    config.update(dict(timesteps=2, batch_size=256, eval_batch_size=360, num_epochs=2, log_every_steps=1000))
    config.update(overrides)
    return config


@pytest.mark.parametrize("method", ["rate_m"] + [pytest.param(m, marks=pytest.mark.slow)
                                                 for m in ("bptt_m", "sltt", "ottt", "bptt_remat")])
def test_pmapped_step_equals_single_device_step(method):
    """4 devices × 2 examples == 1 device × 8 examples (float64, rel. error ≤ 1e-10)."""
    config = tiny_digits_config(method=method, dtype="float64")
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 8, 8, 1)), "label": rng.integers(0, 10, 8).astype(np.int32)}
    init_model = train.create_model(config, 10, 1, axis_name=None)
    state = train.create_train_state(config, init_model, batch["image"], steps_per_epoch=10)
    model = train.create_model(config, 10, 1)
    results = []
    for devices in (4, 1):
        sharded = jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), batch)
        replicated = flax.jax_utils.replicate(state, jax.local_devices()[:devices])
        new_state, metrics = train.p_train_step(replicated, sharded, np.zeros(devices, np.int32), model, method, 2,
                                                jnp.dtype(jnp.float64), None)
        results.append((train.unreplicate(new_state), train.unreplicate(metrics)))
    (multi, multi_metrics), (single, single_metrics) = results
    np.testing.assert_allclose(multi_metrics["loss"], single_metrics["loss"], rtol=1e-10)
    for tree in ("params", "batch_stats"):
        a, b = getattr(multi, tree), getattr(single, tree)
        a, b = jax.device_get((a, b))
        error = optax.tree.norm(jax.tree.map(np.subtract, a, b)) / optax.tree.norm(b)
        assert error <= 1e-10, (tree, float(error))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), single.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the step did change the parameters


def test_the_step_compiles_once_for_every_seed(monkeypatch):
    """Runs of one recipe with seeds 0, 1 and 2, each with its own state and model as train_and_evaluate
    makes them (as compare runs them), share one compiled step: the seed is traced and the optimiser,
    a static part of the state, is the same object. T = 3 is used nowhere else, so the first call
    traces. sltt_k draws different steps for different seeds."""
    traces = []

    def counted(*args, **kwargs):
        traces.append(1)  # runs once per trace of the step, never when a compiled step runs
        return real(*args, **kwargs)

    real = methods.step_output
    monkeypatch.setattr(methods, "step_output", counted)
    batch = {"image": np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32),
             "label": np.arange(4, dtype=np.int32)}
    losses = []
    for seed in (0, 1, 2):
        config = tiny_digits_config(method="sltt_k", sltt_k=1, timesteps=3, seed=seed)
        state = train.create_train_state(config, train.create_model(config, 10, 1, axis_name=None), batch["image"],
                                         10)
        new_state, metrics = train.p_train_step(flax.jax_utils.replicate(state, jax.local_devices()[:1]),
                                                jax.tree.map(lambda x: x[None], batch), np.full(1, seed, np.int32),
                                                train.create_model(config, 10, 1), "sltt_k", 3,
                                                jnp.dtype(jnp.float32), 1)
        losses.append(float(metrics["loss"][0]))
    assert len(traces) == 1
    assert len(set(losses)) == 3  # different parameters and drawn steps: the seeds did reach the step


MOCK_CIFAR_RUN = """
import json, os, sys
import tensorflow_datasets as tfds
from configs import cifar10_resnet18
from ratebp_jax import train

config = cifar10_resnet18.get_config("smoke")
with tfds.testing.mock_data(num_examples=32, data_dir=sys.argv[1] + "/tfds"):
    os.makedirs(tfds.builder("cifar10").data_dir)  # prepared, as far as training can tell (conftest.prepared_mock_data)
    first = train.train_and_evaluate(config, sys.argv[1] + "/run")
    config.max_steps = 3
    resumed = train.train_and_evaluate(config, sys.argv[1] + "/run")
print(json.dumps([first, resumed]))
"""


@pytest.mark.slow  # compiles ResNet-18's rate_m step
def test_cifar10_config_runs_on_mock_data_and_resumes(tmp_path):
    """In a subprocess on one device (see conftest.ONE_DEVICE_ENV)."""
    proc = subprocess.run([sys.executable, "-c", MOCK_CIFAR_RUN, str(tmp_path)], cwd=REPO, env=conftest.ONE_DEVICE_ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, resumed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first["steps_done"] == 2 and np.isfinite(first["params_l2"])
    assert resumed["steps_done"] == 3 and resumed["params_l2"] != first["params_l2"]


@pytest.mark.slow  # a digits run to step 3
def test_nan_loss_stops_with_the_step_named(tmp_path, monkeypatch):
    real_shard, calls = train.shard, []

    def shard_with_nan_at_step_3(batch):
        calls.append(1)
        if len(calls) == 3:
            batch = {**batch, "image": batch["image"] * np.nan}
        return real_shard(batch)

    monkeypatch.setattr(train, "shard", shard_with_nan_at_step_3)
    # NaN inputs give NaN gradients at step 3 while the loss stays finite: spikes hide NaN.
    with pytest.raises(train.NonFiniteLossError, match=r"grad_norm is nan at step 3; training stopped"):
        train.train_and_evaluate(tiny_digits_config(), str(tmp_path))
    assert not os.path.exists(tmp_path / "results.json")


def test_learning_rate_is_cosine_per_epoch_and_decay_skips_biases_and_batchnorm():
    config = tiny_digits_config(num_epochs=4)
    schedule = train.learning_rate(config, steps_per_epoch=10)
    lrs = np.array([float(schedule(step)) for step in (0, 9, 10, 25, 39, 40)]) / config.optimizer.learning_rate
    np.testing.assert_allclose(lrs, [1, 1, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4)), 0],
                               atol=1e-7)
    params = {"conv0": {"kernel": 1, "bias": 2}, "bn0": {"scale": 3, "bias": 4}, "classifier": {"kernel": 5, "bias": 6}}
    assert train.weight_decay_mask(params) == {"conv0": {"kernel": True, "bias": False},
                                               "bn0": {"scale": False, "bias": False},
                                               "classifier": {"kernel": True, "bias": False}}


@pytest.mark.parametrize("field,value,message", [
    ("dataset", "mnist", "config.dataset='mnist' is invalid: must be one of"),
    ("model", "resnet50", "config.model='resnet50' is invalid: must be one of"),
    ("method", "otttt", "config.method='otttt' is invalid: must be one of ('bptt_m'"),
    ("timesteps", 0, "config.timesteps=0 is invalid: must be an integer >= 1"),
    ("batch_size", 6, "config.batch_size=6 is invalid: must be a positive multiple of the device count (4)"),
    ("optimizer.learning_rate", -0.1, "config.optimizer.learning_rate=-0.1 is invalid: must be > 0"),
    ("neuron.reset", "zero", "config.neuron.reset must be one of ('soft', 'hard')"),
])
def test_bad_config_values_are_named(field, value, message):
    config = digits.get_config()
    node, *path = [config] + field.split(".")
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(configuration.ConfigError) as error:
        configuration.validate(config, data.DATASETS)
    assert message in str(error.value)


@pytest.mark.parametrize("k,message", [
    (None, "config.sltt_k=None is invalid: method sltt_k needs K, the number of steps that backpropagate: "
           "set --config.sltt_k=K with 1 <= K <= timesteps (4)"),
    (0, "config.sltt_k=0 is invalid: must be an integer with 1 <= sltt_k <= timesteps (4)"),
    (5, "config.sltt_k=5 is invalid: must be an integer with 1 <= sltt_k <= timesteps (4)"),
])
def test_bad_sltt_k_is_named(k, message):
    config = digits.get_config()
    config.method, config.sltt_k = "sltt_k", k
    with pytest.raises(configuration.ConfigError) as error:
        configuration.validate(config, data.DATASETS)
    assert str(error.value) == message
    config.sltt_k = 4
    configuration.validate(config, data.DATASETS)


@pytest.mark.slow  # a CLI process
# One process (about 12 s each on 2 cores): the messages are the in-process tests' above; this one
# needs the process's device count.
@pytest.mark.parametrize("flags,message", [
    (["--config.batch_size=6"], "config.batch_size=6 is invalid: must be a positive multiple of the device count (4)"),
])
def test_cli_rejects_bad_config_with_one_line(tmp_path, flags, message):
    env = {**os.environ, "XLA_FLAGS": conftest.XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config", "configs/digits.py",
                           "--workdir", str(tmp_path), *flags], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: {message}"]
    assert not os.listdir(tmp_path)  # nothing was written, nothing compiled


def test_smoke_variant_shrinks_any_config():
    config = common.with_variant(cifar10_resnet18.get_config(), "smoke")
    assert (config.max_steps, config.batch_size, config.timesteps) == (2, 8, 2)
    with pytest.raises(ValueError, match="variant"):
        cifar10_resnet18.get_config("tiny")


CONFIG_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")
                      and f not in ("__init__.py", "common.py"))


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("variant", ["", "smoke"])
def test_every_config_file_validates(name, variant, tmp_path):
    """Every recipe in configs/ (and its smoke variant) passes the checks a run makes before data."""
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    assert train.check_run(config, str(tmp_path / "run")) == "new"
