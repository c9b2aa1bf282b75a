"""Golden values of one digits training step: a change of the numerics fails here, with the old and new values.

The step is the real one (``train.train_and_evaluate`` with max_steps=1, on the
4 virtual CPU devices of conftest): the first batch of epoch 0 with seed 0, T = 4,
float32, the default method rate_m and bptt_m. The loss and the gradient norm
are the ones the run logs (TensorBoard "train_loss", "train_grad_norm" at step
1); params_l2 is results.json's norm of the parameters after the step (Adam's
first step moves each parameter by about the learning rate whatever the
gradient's size, so the gradient norm is what sees a change of the gradient).
If a change is meant to move them, rerun this test with -s and paste the new
values it prints into GOLDEN, saying why in the commit.
"""

import glob
import os

import pytest
import tensorflow as tf

from configs import digits
from ratebp_jax import train

# method -> (loss, grad_norm, params_l2) of step 1; measured with jax 0.10.2 on XLA:CPU (x86_64).
GOLDEN = {
    "rate_m": (2.9479713439941406, 0.28786003589630127, 153.80125427246094),
    "bptt_m": (2.9479713439941406, 1.1642378568649292, 153.8147735595703),
}
RTOL = 2e-6  # float32: a few ulps, for another reduction order on another CPU; a real change moves more


def logged_scalar(workdir: str, tag: str, step: int) -> float:
    """The scalar ``tag`` at ``step`` from the TensorBoard event files in workdir."""
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag and event.step == step:
                    return float(tf.make_ndarray(value.tensor))
    raise KeyError(f"no {tag} at step {step} in {workdir}")


@pytest.mark.parametrize("method", ["rate_m", pytest.param("bptt_m", marks=pytest.mark.slow)])
def test_one_digits_step_matches_the_golden_values(method, tmp_path):
    config = digits.get_config()
    config.update(dict(method=method, max_steps=1, max_eval_steps=1, log_every_steps=1))
    results = train.train_and_evaluate(config, str(tmp_path))
    new = (logged_scalar(str(tmp_path), "train_loss", 1), logged_scalar(str(tmp_path), "train_grad_norm", 1),
           results["params_l2"])
    old = GOLDEN[method]
    print(f"{method}: (loss, grad_norm, params_l2) = {new!r}")
    assert results["steps_done"] == 1
    assert new == pytest.approx(old, rel=RTOL), (
        f"{method}: one step's (loss, grad_norm, params_l2) moved from the golden {old} to {new}; "
        "if that is intended, update GOLDEN")
