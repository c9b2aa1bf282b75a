"""Trains a model from a config file; rerunning the same command resumes.

    python -m experiments.train --config configs/digits.py --workdir runs/digits \
        [--config.method=bptt_m --config.timesteps=6 ...] [--distributed]

WORKDIR receives the run's record (config.json, history.jsonl), checkpoints/
(Orbax), TensorBoard event files and results.json. Each of these stops the run
with one line and exit status 2, before any data are loaded: an unknown or bad
config field, a workdir that cannot be written or that another run holds, a
config that differs from the one the workdir's run was trained with (naming
each field); so does a dataset that is not prepared, with the directory
searched and the command that prepares it (experiments.prepare).
For several hosts, start the same command on each with --distributed (JAX's
jax.distributed.initialize: automatic on TPU pods and SLURM, else set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; README,
"Several hosts"). SIGTERM or Ctrl-C saves a checkpoint after the current step
and exits with status 75; the same command resumes.
"""

import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli, common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/NAME.py[:smoke]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving; rerun to resume


def main(argv):
    common.start(argv)
    import jax

    from ratebp_jax import checkpoint, configuration, data, multihost, runs, train

    if _DISTRIBUTED.value:
        try:
            multihost.initialize()
        except ValueError as error:
            cli.fail(f"--distributed: {error} Set {', '.join(multihost.ENVIRONMENT)}, "
                     "or run under SLURM or on a TPU VM, where JAX finds them.")
    try:
        results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (configuration.ConfigError, runs.RunError, data.DataNotFoundError,
            checkpoint.CheckpointError) as error:  # raised before the first step
        cli.fail(error)
    except multihost.Preempted as preempted:
        if jax.process_index() == 0:
            print(preempted, file=sys.stderr, flush=True)
        sys.exit(PREEMPTED)
    train.say(f"done: test accuracy {results['test_accuracy']:.2f}% (best {results['best_test_accuracy']:.2f}%), "
              f"{results['train_time_s']:.0f} s; results in {_WORKDIR.value}/results.json")


if __name__ == "__main__":
    cli.run(main)
