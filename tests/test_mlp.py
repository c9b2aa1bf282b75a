"""The zoo's spiking MLP (SPEC §8) with and without BatchNorm: SPEC oracles 1 and 5 on sequence
inputs, and a short training run of each method family on each temporal task."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_latency, digits_rows
from ratebp_jax import models, train
from test_methods import random_variables, step
from test_online_methods import sltt_k_step
from test_own_model import assert_oracles_1_and_5, assert_same_step

ROW = (1, 8, 1)  # one step of digits_rows: [H, W, C]


def setup(batch_norm, batch=3, timesteps=1):
    """float64 mlp (widths 6, 5), a random sequence [B, T, 1, 8, 1] of rows, labels."""
    model = models.create("mlp", num_classes=10, in_channels=1, dtype=jnp.float64,
                          model_kwargs={"widths": (6, 5), "batch_norm": batch_norm})
    sequence = jax.random.uniform(jax.random.key(1), (batch, timesteps) + ROW, jnp.float64) * 2
    variables = random_variables(model, sequence[:, 0])
    assert ("hidden0" in variables["batch_stats"]) == batch_norm
    return model, variables, sequence, jnp.arange(batch) % 10


@pytest.mark.parametrize("batch_norm", [True, False])
def test_oracles_1_and_5_at_one_timestep(batch_norm):
    """T = 1: rate_m == bptt_m, rate_s == bptt_s, sltt == ottt == bptt_s."""
    assert_oracles_1_and_5(*setup(batch_norm))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_oracle5_bptt_remat_and_sltt_k_on_sequences(batch_norm):
    """bptt_remat == bptt_m at T = 4 (each hidden layer is a marked block); sltt_k with K = T == sltt."""
    model, variables, sequence, labels = setup(batch_norm, timesteps=4)
    assert_same_step(step(model, "bptt_remat", variables, sequence, labels, 4),
                     step(model, "bptt_m", variables, sequence, labels, 4))
    out = sltt_k_step("sltt_k", model, variables, sequence, labels, timesteps=4, rng=jax.random.key(0), k=4)
    assert_same_step(out, step(model, "sltt", variables, sequence, labels, 4))


def test_widths_and_batch_norm_come_from_model_kwargs():
    model = models.create("mlp", num_classes=10, in_channels=1, model_kwargs={"widths": [7], "batch_norm": False})
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), jnp.zeros((2, 8, 8, 8, 1)), timesteps=8))
    assert variables["params"]["hidden0"]["Dense_0"]["kernel"].shape == (64, 7) and variables["batch_stats"] == {}
    assert variables["params"]["classifier"]["kernel"].shape == (7, 10)
    for kwargs, message in (({"widths": []}, "widths must be"), ({"batch_norm": "no"}, "batch_norm must be"),
                            ({"depth": 2}, "do not fit the builder of model 'mlp'")):
        with pytest.raises(ValueError, match=message):
            models.create("mlp", num_classes=10, in_channels=1, model_kwargs=kwargs)


@pytest.mark.slow  # six runs, each compiling its step (about 25 s)
@pytest.mark.parametrize("task", [digits_rows, digits_latency], ids=["digits_rows", "digits_latency"])
def test_each_method_family_trains_on_the_temporal_task(task, tmp_path):
    """The smoke recipe (2 steps, T = 8 kept) of bptt_m, sltt and rate_m, with BatchNorm."""
    for method in ("bptt_m", "sltt", "rate_m"):
        config = task.get_config("smoke")
        config.method = method
        result = train.train_and_evaluate(config, str(tmp_path / method))
        assert config.timesteps == 8 and result["steps_done"] == 2, method
        assert result["method"] == method and 0 <= result["test_accuracy"] <= 100
        assert np.isfinite(result["params_l2"])
