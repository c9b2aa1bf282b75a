"""What the experiment commands share: their flag checks, a model at initialisation on a
random batch, a trained run read from its workdir, and its first test batches.

    common.start(argv)                                       # in every main
    trained = common.check_mode(initial_only=["model"])      # --workdir: a trained run
    model, variables, split, config = common.trained_run(workdir)
    model, variables, images, labels = common.random_init("resnet18", batch_size=16)
    for images, labels in common.first_test_batches(split, 4, config.dtype): ...

The library is imported inside the functions, so that --help and a flag error
come back before JAX and TensorFlow load.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Sequence

from absl import flags

from experiments import cli, report


def start(argv: Sequence[str]) -> None:
    """What every main does first: no positional arguments (else one line, exit 2), library logs from
    WARNING up."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {list(argv[1:])} (see --help)")
    report.quiet_library_logs()


def check_mode(*, initial_only: Sequence[str] = (), trained_only: Sequence[str] = ()) -> bool:
    """True for a trained run (--workdir given), False for a model at initialisation.

    The flags --config and --workdir must be defined. Ends the process (one
    line, exit 2, as cli.fail) if --config comes without --workdir, or a flag
    of the other mode was given: initial_only (e.g. --model) with --workdir,
    trained_only without it.
    """
    trained = flags.FLAGS["workdir"].value is not None
    if flags.FLAGS["config"].value is not None and not trained:
        cli.fail("--config goes with --workdir (a trained run; checked against its record)")
    wrong = [f"--{name}" for name in (initial_only if trained else trained_only) if flags.FLAGS[name].present]
    if wrong:
        cli.fail(f"{', '.join(wrong)}: only for a model at initialisation; a trained run (--workdir) has its own"
                 if trained else f"{', '.join(wrong)}: only with --workdir (a trained run)")
    return trained


def method_names(values: Sequence[str]) -> list[str]:
    """A --methods list: names of ratebp_jax.METHODS, or ["all"] for all of them; else one line, exit 2."""
    from ratebp_jax import methods

    names = list(methods.METHODS) if list(values) == ["all"] else list(values)
    unknown = [m for m in names if m not in methods.METHODS]
    if unknown or not names:
        cli.fail(f"--methods: unknown {unknown}; allowed: {list(methods.METHODS)} or 'all'")
    return names


class Setup(NamedTuple):
    model: Any       # a flax Module
    variables: dict  # {"params", "batch_stats"} at initialisation
    images: Any      # [B, H, W, C], uniform in [0, 1)
    labels: Any      # int [B] in [0, num_classes)


def random_init(model_name: str, *, batch_size: int, image_size: int = 0, seed: int = 0, dtype: str = "float32",
                num_classes: int = 10, model_module: str = "", model_kwargs: dict | None = None) -> Setup:
    """A model at initialisation and a random batch at its input size (image_size: height =
    width instead; 0: the model's own), all drawn from jax.random.key(seed), as SPEC oracle 4.

    model_module: imported first, so that it registers model_name (as config.model_module);
    model_kwargs: its builder's keyword arguments (config.model_kwargs).
    """
    import importlib

    import jax

    from ratebp_jax import models

    if model_module:
        importlib.import_module(model_module)
    h, w, c = models.input_shape(model_name)
    if image_size:
        h = w = image_size
    key = jax.random.key(seed)
    model = models.create(model_name, num_classes=num_classes, in_channels=c, dtype=dtype,
                          model_kwargs=model_kwargs or {})
    images = jax.random.uniform(jax.random.fold_in(key, 1), (batch_size, h, w, c), dtype)
    labels = jax.random.randint(jax.random.fold_in(key, 2), (batch_size,), 0, num_classes)
    return Setup(model, models.init(model, key, images, timesteps=1), images, labels)


def trained_run(workdir: str, config: Any = None, which: str = "best") -> tuple[Any, dict, Any, Any]:
    """(model, variables, test split, config) of a checkpoint of the run in workdir (runs.load_trained).

    config: None reads the run's record; a given one must agree with it. A
    run that cannot be read (no record, a differing config, no checkpoint, its
    dataset not prepared) ends the process: one line on stderr, exit 2.
    """
    from ratebp_jax import checkpoint, configuration, data, runs

    try:
        return runs.load_trained(workdir, which=which, config=config)
    except (runs.RunError, configuration.ConfigError, FileNotFoundError, data.DataNotFoundError,
            checkpoint.CheckpointError) as error:
        cli.fail(error)


def first_test_batches(split: Any, num_batches: int, dtype: str) -> Iterator[tuple[Any, Any]]:
    """(images [n, ...] as numpy of dtype, labels int [n]) of the first num_batches batches of a
    test split, real examples only (the last batch of a split is padded)."""
    import numpy as np

    for i, batch in enumerate(split.epoch(0)):
        if i >= num_batches:
            return
        real = batch["mask"] > 0
        yield np.asarray(batch["image"][real], dtype), np.asarray(batch["label"][real])


def mean_over_test_batches(split: Any, num_batches: int, dtype: str,
                           measure: Callable[[Any], dict]) -> tuple[dict, int]:
    """({key: mean}, examples): measure(images) -> {key: array or float} averaged over the first
    num_batches test batches, weighted by their real examples; keys in measure's order."""
    totals, count = {}, 0
    for images, _ in first_test_batches(split, num_batches, dtype):
        totals = {k: v * len(images) + totals.get(k, 0) for k, v in measure(images).items()}
        count += len(images)
    return {k: v / count for k, v in totals.items()}, count
