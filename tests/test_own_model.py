"""Models of one's own (tests/own_model.py, the public API only) with every method: SPEC oracles
1 and 5, training, bptt_remat's two forms and its memory, misuse refused by name, checkpoints
without BatchNorm, and registered models through the CLI and the experiments."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import own_model  # noqa: F401  (registers own_cnn and own_mlp)
import ratebp_jax as rbp
from ratebp_jax import configuration, contract, data, layers, methods, models, remat, train
from ratebp_jax.checkpoint import Checkpoints
from test_methods import random_variables, relative_error, step
from test_online_methods import compiled_temp_bytes, sltt_k_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def setup(name="own_cnn", dtype=jnp.float64, batch=3, seed=0, remat_form="auto", **model_kwargs):
    model = models.create(name, num_classes=10, in_channels=1, dtype=dtype, remat_form=remat_form,
                          model_kwargs=model_kwargs)
    images = jax.random.uniform(jax.random.key(seed + 1), (batch, 8, 8, 1), dtype) * 2
    return model, random_variables(model, images, seed), images, jnp.arange(batch) % 10


def assert_same_step(a, b, rtol=1e-10):
    np.testing.assert_allclose(a.loss, b.loss, rtol=rtol)
    assert relative_error(a.grads, b.grads) <= rtol
    assert relative_error(a.batch_stats, b.batch_stats) <= rtol if jax.tree.leaves(b.batch_stats) else True


def assert_oracles_1_and_5(model, variables, sequence, labels):
    """sequence [B, 1, ...]: rate_m == bptt_m, rate_s == bptt_s, sltt == ottt == bptt_s (float64)."""
    reference = {bptt: step(model, bptt, variables, sequence, labels, 1) for bptt in ("bptt_m", "bptt_s")}
    for method, bptt in (("rate_m", "bptt_m"), ("rate_s", "bptt_s"), ("sltt", "bptt_s"), ("ottt", "bptt_s")):
        assert_same_step(step(model, method, variables, sequence, labels, 1), reference[bptt])
    assert float(optax.tree.norm(reference["bptt_m"].grads)) > 0


@pytest.mark.parametrize("name", ["own_cnn", "own_mlp"])
def test_oracles_1_and_5_at_one_timestep(name):
    """float64, T = 1, a one-step sequence: rate_m == bptt_m, rate_s == bptt_s, sltt == ottt == bptt_s."""
    model, variables, images, labels = setup(name)
    assert_oracles_1_and_5(model, variables, images[:, None], labels)


def test_oracle5_bptt_remat_and_sltt_k():
    """float64, sequences [B, T, H, W, C]: bptt_remat == bptt_m at T = 4 (a block without
    BatchNorm, a block without parameters); sltt_k with K = T == sltt at T = 3."""
    model, variables, images, labels = setup()
    sequence = jax.random.uniform(jax.random.key(5), (3, 4) + images.shape[1:], jnp.float64) * 2
    assert_same_step(step(model, "bptt_remat", variables, sequence, labels, 4),
                     step(model, "bptt_m", variables, sequence, labels, 4))
    out = sltt_k_step("sltt_k", model, variables, sequence[:, :3], labels, timesteps=3, rng=jax.random.key(0), k=3)
    assert_same_step(out, step(model, "sltt", variables, sequence[:, :3], labels, 3))


@pytest.mark.parametrize("name", ["own_cnn", pytest.param("digits_vgg", marks=pytest.mark.slow)])
def test_remat_forms_give_equal_gradients(name):
    """float64, T = 3: jax.checkpoint, the CPU custom_vjp and "auto" (on CPU: the custom_vjp)
    give bptt_m's gradients; own_cnn marks module blocks (layers.remat), digits_vgg function
    blocks (Layers.block)."""
    steps = {}
    for form in remat.FORMS:
        model, variables, images, labels = (setup(name, remat_form=form) if name == "own_cnn" else
                                            _zoo_setup(name, form))
        steps[form] = step(model, "bptt_remat", variables, images, labels, 3)
    bptt = step(model, "bptt_m", variables, images, labels, 3)
    for form in remat.FORMS:
        assert_same_step(steps[form], bptt, rtol=1e-12)


def test_remat_auto_chooses_by_lowering_platform():
    """"auto" stages out both forms (jax.lax.platform_dependent), resolved when lowering: the
    custom_vjp for CPU, jax.checkpoint elsewhere; the two fixed forms stage out one each."""
    def staged(form):
        model, variables, images, labels = setup(remat_form=form)
        grads = lambda v: methods.step_output("bptt_remat", model, v, images, labels, timesteps=2).grads
        return set(re.findall(r"= ([a-z_0-9]+)\[", str(jax.make_jaxpr(grads)(variables))))  # primitives

    auto, custom, checkpoint = staged("auto"), staged("custom_vjp"), staged("checkpoint")
    assert {"platform_index", "remat2"} <= auto  # jax.checkpoint's primitive is remat2
    assert not {"platform_index", "remat2"} & custom
    assert "remat2" in checkpoint and "platform_index" not in checkpoint


def _zoo_setup(name, form):
    model = models.create(name, num_classes=10, in_channels=1, dtype=jnp.float64, remat_form=form)
    images = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), jnp.float64) * 2
    return model, random_variables(model, images), images, jnp.arange(3)


def test_remat_form_is_checked():
    with pytest.raises(ValueError, match="remat_form must be one of"):
        models.create("own_cnn", num_classes=10, remat_form="jax")


@pytest.mark.slow  # compiles the eight methods (about 40 s)
def test_every_method_trains():
    """float32, T = 2: a few Adam steps of each method on one batch lower its loss."""
    model, variables, images, labels = setup(dtype=jnp.float32, batch=16, width=4)
    tx = optax.adam(0.02)
    for method in rbp.METHODS:
        params, stats, opt_state, losses = variables["params"], variables["batch_stats"], tx.init(variables["params"]), []
        for _ in range(6):
            out = step(model, method, {"params": params, "batch_stats": stats}, images, labels, 2)
            updates, opt_state = tx.update(out.grads, opt_state, params)
            params, stats = optax.apply_updates(params, updates), out.batch_stats
            losses.append(float(out.loss))
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], (method, losses)


@pytest.mark.slow  # compiles own_cnn's step twice at 32×32 (about 20 s)
def test_bptt_remat_needs_less_memory_than_bptt_m():
    """own_cnn with 3 residual blocks at T = 6, 32×32×3, batch 8: XLA's compiled temporaries
    (measured: 18.6 vs 30.9 MiB; with one block the saving is small, since the backward pass
    of the recomputed block needs its activations again)."""
    remat_bytes, bptt_bytes = (compiled_temp_bytes("own_cnn", method, 6, model_kwargs={"blocks": 3})
                               for method in ("bptt_remat", "bptt_m"))
    assert remat_bytes < 0.8 * bptt_bytes, (remat_bytes, bptt_bytes)


# --- misuse, refused before compiling with one line naming the layer ----------------------------

class Misused(nn.Module):
    """A model with one misused layer (kind) after a conv of ours."""

    kind: str
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, mode):
        x = layers.Conv(4, (3, 3), padding=((1, 1), (1, 1)), spiking_input=False, name="stem")(x, mode)
        if self.kind == "flax_batchnorm":
            x = nn.BatchNorm(use_running_average=mode == "eval", name="norm")(x)
        elif self.kind == "dropout":
            x = nn.Dropout(0.1, deterministic=True, name="drop")(x)
        elif self.kind == "our_batchnorm":
            x = layers.BatchNorm(axis_name=self.axis_name, name="norm")(x, mode)
        x = layers.LIF()(x, mode).reshape(x.shape[:-3] + (-1,))
        dense = nn.Dense(10, name="head") if self.kind == "flax_dense" else layers.Dense(10, name="head")
        return dense(x) if self.kind == "flax_dense" else dense(x, mode)


def misuse_error(kind, method, axis_name=None, pmapped=False):
    model = Misused(kind, axis_name)
    images = jnp.ones((2, 8, 8, 1))
    variables = contract.as_variables(model.init(jax.random.key(0), images[None], mode="bptt"))
    labels = jnp.zeros(2, jnp.int32)

    def run(variables, images, labels):
        return methods.step_output(method, model, variables, images, labels, timesteps=2).loss

    with pytest.raises(contract.ModelError) as error:
        if pmapped:
            jax.pmap(run, axis_name="batch")(*jax.tree.map(lambda a: a[None], (variables, images, labels)))
        else:
            jax.jit(run)(variables, images, labels)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_misuse_is_refused_in_one_line():
    for method in ("rate_m", "bptt_s"):
        assert misuse_error("flax_batchnorm", method).startswith(
            "layer norm is flax.linen.BatchNorm, which has no spike or rate pass: use ratebp_jax.layers.BatchNorm")
        assert misuse_error("dropout", method).startswith("layer drop is flax.linen.Dropout, which is refused")
    assert misuse_error("flax_dense", "ottt").startswith(
        "layer head is flax.linen.Dense, which keeps no presynaptic trace for ottt: use ratebp_jax.layers.Dense")
    assert misuse_error("our_batchnorm", "bptt_m", pmapped=True).startswith(
        "layer norm is a BatchNorm without the device axis in a step run under pmap axis 'batch'")
    assert misuse_error("none", "bptt_remat").startswith(
        "method bptt_remat recomputes the blocks marked with ratebp_jax.layers.remat(Block)")


def test_correct_uses_are_not_refused():
    """flax's Dense outside ottt, our BatchNorm with the device axis under pmap, our own layers everywhere."""
    model, images, labels = Misused("flax_dense"), jnp.ones((2, 8, 8, 1)), jnp.zeros(2, jnp.int32)
    variables = contract.as_variables(model.init(jax.random.key(0), images[None], mode="bptt"))
    assert np.isfinite(float(rbp.compute_grads("sltt", model, variables, images, labels, timesteps=2)[0]))
    model = Misused("our_batchnorm", axis_name="batch")
    variables = contract.as_variables(Misused("our_batchnorm").init(jax.random.key(0), images[None], mode="bptt"))
    run = jax.pmap(lambda v, x, y: methods.step_output("rate_m", model, v, x, y, timesteps=2).loss, axis_name="batch")
    assert np.isfinite(run(*jax.tree.map(lambda a: a[None], (variables, images, labels)))).all()


# --- a model without BatchNorm in checkpoints; registered models everywhere ---------------------

def test_model_without_batchnorm_survives_a_checkpoint(tmp_path):
    model = models.create("own_mlp", num_classes=10, in_channels=1)
    variables = models.init(model, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), timesteps=2)
    assert variables["batch_stats"] == {}
    state = train.TrainState.create(apply_fn=None, params=variables["params"], batch_stats={}, tx=optax.adam(1e-3))
    checkpoints = Checkpoints(str(tmp_path))
    checkpoints.save(state, {"steps_done": 0}, is_best=False)
    checkpoints.close()
    blank = state.replace(params=jax.tree.map(jnp.zeros_like, state.params))
    restored, progress = Checkpoints(str(tmp_path)).restore_latest(blank)
    assert progress == {"steps_done": 0} and restored.batch_stats == {}
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)


def test_register_makes_a_name_like_the_zoos():
    assert {"own_cnn", "own_mlp"} <= set(models.names()) and "own_cnn" not in models.NAMES
    assert models.input_shape("own_cnn") == (8, 8, 1) and models.input_shape("resnet18") == (32, 32, 3)
    wide = models.create("own_cnn", num_classes=10, model_kwargs={"width": 5})
    params = jax.eval_shape(lambda: models.init(wide, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), timesteps=1))
    assert params["params"]["Conv_0"]["kernel"].shape == (3, 3, 1, 5)
    with pytest.raises(ValueError, match="not one of the zoo's"):
        models.register("resnet18", own_model.build_cnn, input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="input_shape of model 'x' must be"):
        models.register("x", own_model.build_cnn, input_shape=(8, 8))
    with pytest.raises(ValueError, match="do not fit the builder of model 'resnet18'.*'width'"):
        models.create("resnet18", num_classes=10, model_kwargs={"width": 5})
    with pytest.raises(ValueError, match="models.register"):
        models.create("own_rnn", num_classes=10)


def test_config_names_the_model_module():
    from configs import digits

    config = digits.get_config("smoke")
    config.model, config.model_module = "own_cnn", "own_model"
    configuration.validate(config, ("digits",), device_count=1)
    config.model_module = "no_such_module"
    with pytest.raises(configuration.ConfigError, match="config.model_module='no_such_module' is invalid"):
        configuration.validate(config, ("digits",), device_count=1)
    config.model, config.model_module = "own_rnn", ""
    with pytest.raises(configuration.ConfigError, match="set config.model_module"):
        configuration.validate(config, ("digits",), device_count=1)


def test_the_readme_model_is_a_config_away():
    """examples/small_snn.py (the README's model) through configs/digits_small_snn.py: it validates on
    the digits, its kwargs reach the builder, and its residual block is the one bptt_remat recomputes."""
    from configs import digits_small_snn

    config = digits_small_snn.get_config()
    config.model_kwargs.width = 6
    configuration.validate(config, data.DATASETS, device_count=4, input_shapes=data.INPUT_SHAPES)
    model = train.create_model(config, 10, 1, axis_name=None)
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), timesteps=1))
    assert variables["params"]["Conv_0"]["kernel"].shape == (3, 3, 1, 6)
    assert variables["params"]["Residual_0"]["Conv_1"]["kernel"].shape == (3, 3, 6, 6)
    contract.check_model(model, variables, jnp.zeros((2, 8, 8, 1)), "bptt_remat", 2)  # it marks a block


CONFIG = """
from configs import digits


def get_config():
    config = digits.get_config("smoke")
    config.model, config.model_module = "own_cnn", "own_model"
    config.model_kwargs.width = 4
    return config
"""


def run(module, *flags):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([REPO, TESTS])}
    proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow  # three CLI processes (train, compare, efficiency isolated): about 100 s
def test_registered_model_through_train_compare_and_efficiency(tmp_path):
    config = tmp_path / "own_cnn_config.py"
    config.write_text(CONFIG)
    run("train", "--config", str(config), "--workdir", str(tmp_path / "train"))
    with open(tmp_path / "train" / "results.json") as f:
        assert json.load(f)["model"] == "own_cnn"
    run("compare", "--config", str(config), "--methods", "bptt_remat", "--seeds", "0", "--repeats", "1",
        "--out", str(tmp_path / "compare"))
    assert "| bptt_remat |" in (tmp_path / "compare" / "compare.md").read_text()
    run("efficiency", "--model_module", "own_model", "--model", "own_cnn", "--model_kwargs", '{"width": 4}',
        "--timesteps", "2", "--methods", "bptt_remat", "--repeats", "1", "--isolate", "--out", str(tmp_path / "eff"))
    rows = (tmp_path / "eff" / "efficiency.csv").read_text().splitlines()
    assert len(rows) == 3 and all(row.startswith("own_cnn,") for row in rows[1:])
