"""The training system: train state, pmapped train and eval steps, and the loop.

    train_and_evaluate(config, workdir) -> results dict

One step is ``methods.step_output`` on each device's share of the global batch,
with gradients, metrics and (through the model's axis_name) every BatchNorm
statistic averaged over the devices of the pmap axis "batch". The loop checks
each step's loss (one step behind, so the devices never wait), evaluates and
checkpoints at epoch ends, and resumes from the latest checkpoint when rerun. The
workdir is the run's record (``runs``): a rerun with a config that computes
something else is refused, and one run at a time holds it.
On SIGTERM or SIGINT it saves after the current step and raises
``multihost.Preempted`` (see ``multihost``).

Several processes run the same loop, each feeding its local devices its slice
of every global batch (``data.pipeline``); the pmapped step spans the devices
of all processes (pmap spans processes as it is: each passes its local shards,
so no shard_map is needed), so gradients and BatchNorm statistics are averaged
over all of them and a P-process run equals a one-process run on as many devices.
Process 0 alone prints, writes TensorBoard events and results.json; every
process takes part in the checkpoints (Orbax's multi-process saves).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metric_writers, periodic_actions
from flax.jax_utils import replicate, unreplicate
from flax.training import train_state
from flax.training.common_utils import shard

from ratebp_jax import configuration, data, methods, models, multihost, runs
from ratebp_jax.checkpoint import Checkpoints

AXIS = "batch"


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm statistics. ``apply_fn`` stays None: the steps take
    the model as a static argument, since a method needs the module itself, not its apply."""

    batch_stats: Any


def learning_rate(config, steps_per_epoch: int):
    """Cosine from optimizer.learning_rate to 0 over num_epochs, constant within an epoch
    (PyTorch's CosineAnnealingLR stepped once per epoch, as in the reference)."""
    return cosine_per_epoch(config.optimizer.learning_rate, config.num_epochs, steps_per_epoch)


def cosine_per_epoch(base: float, epochs: int, steps_per_epoch: int):
    """step -> base · (1 + cos(π · epoch / epochs)) / 2, epoch = min(step // steps_per_epoch, epochs)."""
    def schedule(step):
        epoch = jnp.minimum(step // steps_per_epoch, epochs)
        return base * 0.5 * (1 + jnp.cos(jnp.pi * epoch / epochs))
    return schedule


def weight_decay_mask(params: Any) -> Any:
    """True for conv and linear kernels, False for biases and BatchNorm parameters."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """As the reference's PyTorch optimisers: the gradient plus wd·w on kernels only, then
    SGD with momentum (no dampening) or Adam (momentum is its β1).

    The same hyperparameters give the same object: the optimiser is a static part of the
    train state, so that the runs of one recipe (compare's seeds) share one compiled step.
    """
    opt = config.optimizer
    return _optimizer(opt.name, opt.learning_rate, opt.momentum, opt.weight_decay, config.num_epochs,
                      steps_per_epoch)


@functools.lru_cache(maxsize=None)
def _optimizer(name: str, base_lr: float, momentum: float, weight_decay: float, num_epochs: int,
               steps_per_epoch: int) -> optax.GradientTransformation:
    lr = cosine_per_epoch(base_lr, num_epochs, steps_per_epoch)
    update = optax.sgd(lr, momentum=momentum or None) if name == "sgd" else optax.adam(lr, b1=momentum)
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask), update)


def create_model(config, num_classes: int, in_channels: int, axis_name: str | None = AXIS):
    """The config's model (config.model_module imported first, which may register it); with
    axis_name its BatchNorm averages statistics over that pmap axis."""
    configuration.import_model_module(config)
    return models.create(config.model, num_classes=num_classes, in_channels=in_channels,
                         dtype=jnp.dtype(config.dtype), axis_name=axis_name,
                         model_kwargs=configuration.model_kwargs(config), **config.neuron)


def create_train_state(config, model, images: np.ndarray, steps_per_epoch: int) -> TrainState:
    """A fresh state; model: created without axis_name, to initialise; images: [B, ...] like the training data."""
    images = jnp.asarray(images[:1], jnp.dtype(config.dtype))
    variables = models.init(model, jax.random.key(config.seed), images, timesteps=config.timesteps)
    return TrainState.create(apply_fn=None, params=variables["params"], batch_stats=variables["batch_stats"],
                             tx=make_optimizer(config, steps_per_epoch))


def train_step(state: TrainState, batch: dict, seed: jax.Array, model, method: str, timesteps: int, dtype,
               sltt_k: int | None) -> tuple:
    """One step on this device's batch {"image", "label"}; runs under pmap with axis "batch".

    seed: an integer scalar, traced (one compiled step serves every seed).
    sltt_k draws its K steps from a key of (seed, step number), the same on
    every device: the same seed gives the same steps, and so does a resumed run.
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    out = methods.step_output(method, model, variables, batch["image"].astype(dtype), batch["label"],
                             timesteps=timesteps, rng=rng, k=sltt_k)
    grads = jax.lax.pmean(out.grads, AXIS)
    state = state.apply_gradients(grads=grads).replace(batch_stats=out.batch_stats)
    accuracy = jnp.mean(jnp.argmax(out.logits, -1) == batch["label"])
    metrics = jax.lax.pmean({"loss": out.loss, "accuracy": accuracy}, AXIS)
    return state, {**metrics, "grad_norm": optax.tree.norm(grads)}


def eval_step(variables: dict, batch: dict, model, timesteps: int, dtype) -> dict:
    """Sums over all devices of correct top-1/top-5 predictions and of examples (mask);
    variables: {"params", "batch_stats"}."""
    logits = methods.evaluate(model, variables, batch["image"].astype(dtype), timesteps=timesteps)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    mask = batch["mask"]
    sums = {"correct": jnp.sum((top5[:, 0] == batch["label"]) * mask),
            "correct_top5": jnp.sum(jnp.any(top5 == batch["label"][:, None], axis=-1) * mask),
            "count": jnp.sum(mask)}
    return jax.lax.psum(sums, AXIS)


# Module-level so that JAX's compilation cache serves every run in a process (a resumed
# run, a notebook's second run, compare's seeds); the arguments after the seed are static.
p_train_step = jax.pmap(train_step, axis_name=AXIS, static_broadcasted_argnums=(3, 4, 5, 6, 7),
                        donate_argnums=(0,))
p_eval_step = jax.pmap(eval_step, axis_name=AXIS, static_broadcasted_argnums=(2, 3, 4))


def eval_accuracy(variables: dict, split, model, timesteps: int, dtype, max_steps: int = 0) -> dict:
    """Top-1 and top-5 accuracy (in %) over the eval split (or its first max_steps batches);
    variables {"params", "batch_stats"} are replicated over the local devices."""
    totals = {"correct": 0.0, "correct_top5": 0.0, "count": 0.0}
    for i, batch in enumerate(split.epoch(0)):
        if max_steps and i >= max_steps:
            break
        sums = unreplicate(p_eval_step(variables, shard(batch), model, timesteps, dtype))
        totals = {k: totals[k] + float(sums[k]) for k in totals}
    count = max(totals["count"], 1.0)
    return {"accuracy": 100 * totals["correct"] / count, "accuracy_top5": 100 * totals["correct_top5"] / count}


def say(line: str) -> None:
    """Prints on process 0 only (the others run the same loop, silently)."""
    if jax.process_index() == 0:
        print(line, flush=True)


class NonFiniteLossError(FloatingPointError):
    """The training loss or gradient became NaN or Inf.

    Both are checked: a spiking network can hide NaN parameters behind a finite
    loss, since NaN membrane potentials never cross the threshold (H(NaN) = 0).
    """


class ProgressLog:
    """Checks each finished step's loss; every log_every_steps and at each epoch's end prints a
    progress line and writes the metrics (TensorBoard event files in the workdir).

    The line's steps/s is clu's ``ReportProgress`` measurement since its previous report (the
    first one includes compilation), which it also writes to TensorBoard ("steps_per_sec",
    "uptime"); the ETA is the remaining steps at that rate.
    """

    def __init__(self, writer, config, total_steps: int, steps_per_epoch: int, workdir: str, first_step: int):
        self.writer, self.config, self.workdir = writer, config, workdir
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.report = periodic_actions.ReportProgress(
            num_train_steps=total_steps, writer=self, every_steps=config.log_every_steps, every_secs=None,
            on_steps=range(steps_per_epoch, total_steps, steps_per_epoch))
        self.report(first_step)  # starts its clock: the first call never reports
        self.steps_per_sec = math.nan

    def write_scalars(self, step: int, scalars: dict) -> None:
        """Called by ReportProgress with its measurements: kept for the line, and written."""
        self.steps_per_sec = scalars.get("steps_per_sec", self.steps_per_sec)
        self.writer.write_scalars(step, scalars)

    def step_done(self, metrics, step: int) -> None:
        metrics = jax.tree.map(float, unreplicate(metrics))
        for name in ("loss", "grad_norm"):
            if not math.isfinite(metrics[name]):
                raise NonFiniteLossError(
                    f"{name} is {metrics[name]} at step {step}; training stopped. The last good checkpoint "
                    f"is kept in {os.path.join(self.workdir, 'checkpoints', 'latest')}.")
        if self.report(step):
            self.writer.write_scalars(step, {f"train_{k}": v for k, v in metrics.items()})
            say(self._line(step, metrics))

    def _line(self, step: int, metrics: dict) -> str:
        eta = time.strftime("%H:%M:%S", time.gmtime((self.total_steps - step) / self.steps_per_sec))
        epoch = (step - 1) // self.steps_per_epoch + 1
        return (f"epoch {epoch}/{self.config.num_epochs}  step {step}/{self.total_steps}  loss {metrics['loss']:.4f}  "
                f"train acc {100 * metrics['accuracy']:.1f}%  {self.steps_per_sec:.2f} steps/s  ETA {eta}")


def check_run(config, workdir: str) -> str:
    """Everything that can be checked before data are loaded: the config's values, that workdir can be
    written, and that the config agrees with workdir's record (runs.check_resume, whose answer this is).

    Raises configuration.ConfigError (runs.ConfigMismatch among them) or runs.RunError, one line each.
    """
    configuration.validate(config, data.DATASETS, sequence_lengths=data.SEQUENCE_LENGTHS,
                           input_shapes=data.INPUT_SHAPES)
    runs.check_workdir(workdir)
    return runs.check_resume(config, workdir)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains config.model on config.dataset with config.method in workdir; returns (and writes) results.json.

    Checks first (check_run), then holds workdir for this run (runs.hold) and
    records the start (runs.record_start). Rerunning resumes from the latest
    checkpoint.
    """
    start = check_run(config, workdir)
    with runs.hold(workdir):
        return _train(config, workdir, start)


def _train(config, workdir: str, start: str) -> dict:
    """The run itself; start: what check_run said it is (recorded once the data are loaded)."""
    clock = time.monotonic()
    process_batch = config.batch_size // jax.process_count()
    split_args = dict(seed=config.seed, data_dir=config.data_dir or None)
    train_split = data.make_split(config.dataset, train=True, batch_size=process_batch, augment=config.augment,
                                  **split_args)
    eval_split = data.make_split(config.dataset, train=False, batch_size=config.eval_batch_size // jax.process_count(),
                                 **split_args)
    runs.record_start(config, workdir, start)
    if start == "unrecorded":
        say(f"{workdir} has checkpoints but no record of its config (made before runs were recorded): "
            f"resuming with the given config, now recorded in {runs.CONFIG_FILE}")
    elif start == "restart":
        say(f"{workdir} has a recorded config but no checkpoint yet: starting afresh with the given config")
    steps_per_epoch = train_split.steps_per_epoch
    total_steps = config.num_epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    num_classes, in_channels = train_split.num_classes, train_split.input_shape[-1]
    model = create_model(config, num_classes, in_channels)
    state = create_train_state(config, create_model(config, num_classes, in_channels, axis_name=None),
                               np.zeros((1,) + tuple(train_split.input_shape), np.float32), steps_per_epoch)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
    progress = {"epochs_done": 0, "steps_done": 0, "best_test_accuracy": 0.0, "test_accuracy": None,
                "train_time_s": 0.0}
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state, progress = restored
        say(f"resuming from step {progress['steps_done']} (epoch {progress['epochs_done']}) in {workdir}")
    previous_time = progress["train_time_s"]

    dtype = jnp.dtype(config.dtype)
    writer = (metric_writers.create_default_writer(workdir) if jax.process_index() == 0
              else metric_writers.MultiWriter([]))  # writes nothing
    state = replicate(state)
    seeds = np.full(jax.local_device_count(), config.seed, np.int32)  # traced: one compiled step for every seed

    log = ProgressLog(writer, config, total_steps, steps_per_epoch, workdir, first_step=progress["steps_done"])
    step = progress["steps_done"]
    with multihost.PreemptionWatch() as preemption:
        while step < total_steps:
            epoch, start_step = divmod(step, steps_per_epoch)
            pending = None  # the previous step's metrics, read once the next step is queued
            preempted = False
            for batch in train_split.epoch(epoch, start_step=start_step):
                state, metrics = p_train_step(state, shard(batch), seeds, model, config.method, config.timesteps,
                                              dtype, config.sltt_k)
                if pending is not None:
                    log.step_done(*pending)
                step += 1
                pending = (metrics, step)
                preempted = preemption.reached(step)  # every process, every step: they agree on one step
                if step >= total_steps or preempted:
                    break
            if pending is not None:
                log.step_done(*pending)
            progress = {**progress, "epochs_done": step // steps_per_epoch, "steps_done": step,
                        "train_time_s": previous_time + time.monotonic() - clock}
            if preempted and step < total_steps:
                checkpoints.save(jax.device_get(unreplicate(state)), progress, is_best=False)
                checkpoints.close()
                raise multihost.Preempted(step)
            epoch_done = step % steps_per_epoch == 0
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            eval_metrics = eval_accuracy(variables, eval_split, model, config.timesteps, dtype, config.max_eval_steps)
            writer.write_scalars(step, {f"test_{k}": v for k, v in eval_metrics.items()})
            accuracy = eval_metrics["accuracy"]
            is_best = accuracy > progress["best_test_accuracy"]
            progress = {**progress, "test_accuracy": accuracy,
                        "best_test_accuracy": max(accuracy, progress["best_test_accuracy"])}
            say(f"epoch {step / steps_per_epoch:.2f}: test accuracy {accuracy:.2f}% "
                f"(best {progress['best_test_accuracy']:.2f}%)")
            last = step >= total_steps
            if last or not epoch_done or progress["epochs_done"] % config.checkpoint_every_epochs == 0:
                checkpoints.save(jax.device_get(unreplicate(state)), progress, is_best=is_best)
    checkpoints.close()
    writer.flush()

    state = unreplicate(state)
    results = {"method": config.method, "model": config.model, "dataset": config.dataset,
               "timesteps": config.timesteps, "epochs_done": progress["epochs_done"],
               "steps_done": progress["steps_done"], "test_accuracy": progress["test_accuracy"],
               "best_test_accuracy": progress["best_test_accuracy"],
               "params_l2": float(optax.tree.norm(state.params)), "train_time_s": progress["train_time_s"]}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results

