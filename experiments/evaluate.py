"""Test accuracy of a trained run's checkpoint, computed with the run's own config.

    python -m experiments.evaluate --workdir runs/digits [--which best|latest]

Reads the config the run recorded (WORKDIR/config.json) and its best (highest
test accuracy) or latest checkpoint, evaluates it as the run did (evaluation
mode: running BatchNorm statistics; the run's T; its test split, or the first
max_eval_steps batches of it where the config caps them), prints top-1
(and top-5 where the dataset has more than 10 classes) and writes
WORKDIR/eval_{which}.json. It only reads the run, so it takes no lock and may
run while the run trains on.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments import cli, common

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run (experiments.train).")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint: best test accuracy, or latest.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    common.start(argv)
    import jax.numpy as jnp
    from flax.jax_utils import replicate

    from ratebp_jax import train

    workdir, which = _WORKDIR.value, _WHICH.value
    model, variables, split, config = common.trained_run(workdir, which=which)
    metrics = train.eval_accuracy(replicate(variables), split, model, config.timesteps, jnp.dtype(config.dtype),
                                  config.max_eval_steps)
    result = {"which": which, "method": config.method, "model": config.model, "dataset": config.dataset,
              "timesteps": config.timesteps, "test_accuracy": metrics["accuracy"]}
    line = f"{which} checkpoint of {workdir} ({config.model}, {config.method}, T = {config.timesteps}): " \
           f"test accuracy {metrics['accuracy']:.2f}%"
    if split.num_classes > 10:
        result["test_accuracy_top5"] = metrics["accuracy_top5"]
        line += f", top-5 {metrics['accuracy_top5']:.2f}%"
    path = os.path.join(workdir, f"eval_{which}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{line}; written to {path}")


if __name__ == "__main__":
    cli.run(main)
