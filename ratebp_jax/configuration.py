"""Early checks of a training config: one clear error naming the field and what it may be."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from ratebp_jax import methods, models
from ratebp_jax.neuron import LIFParams

DTYPES = ("float32", "float64", "bfloat16")
OPTIMIZERS = ("sgd", "adam")


class ConfigError(ValueError):
    """A config field holds a value the training system cannot use."""


def _check(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def import_model_module(config: Any) -> None:
    """Imports config.model_module (if set), the module that registers config.model
    (models.register); ConfigError naming the field if it cannot be imported."""
    module = config.get("model_module") or ""
    if not module:
        return
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"config.model_module={module!r} is invalid: cannot import it ({error}); "
                          "it must be importable from the working directory or PYTHONPATH") from None


def model_kwargs(config: Any) -> dict:
    """config.model_kwargs as a plain dict ({} when absent)."""
    kwargs = config.get("model_kwargs") or {}
    return kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)


def validate(config: Any, datasets: tuple[str, ...], device_count: int | None = None, *,
             sequence_lengths: Mapping[str, int] | None = None,
             input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Raises ConfigError for the first invalid field of ``config`` (an ml_collections ConfigDict).

    datasets: the dataset names the data package knows. device_count: the
    global number of devices the batch is split over (default: all devices).
    sequence_lengths: dataset name -> frames per example for the datasets of
    sequences (data.SEQUENCE_LENGTHS), whose timesteps must equal it.
    input_shapes: dataset name -> shape of one example (data.INPUT_SHAPES);
    with it, the model is traced abstractly on that shape (nothing computed),
    so that a model that cannot take it (vgg11 on 8×8 digits) is named here.
    """
    device_count = jax.device_count() if device_count is None else device_count
    _check(config.dataset in datasets, "dataset", config.dataset, f"must be one of {datasets}")
    import_model_module(config)
    _check(config.model in models.names(), "model", config.model,
           f"must be one of {models.names()} (a model of one's own: set config.model_module to the module "
           "that registers it)")
    model_kwargs = config.get("model_kwargs") or {}
    _check(hasattr(model_kwargs, "items") and all(isinstance(k, str) for k in model_kwargs.keys()), "model_kwargs",
           model_kwargs, "must be a dict of keyword arguments of the model's builder")
    _check(config.method in methods.METHODS, "method", config.method, f"must be one of {methods.METHODS}")
    _check(_is_int(config.timesteps) and config.timesteps >= 1, "timesteps", config.timesteps,
           "must be an integer >= 1")
    if config.method == "sltt_k":
        k = config.get("sltt_k")
        _check(k is not None, "sltt_k", k, "method sltt_k needs K, the number of steps that backpropagate: "
               f"set --config.sltt_k=K with 1 <= K <= timesteps ({config.timesteps})")
        _check(_is_int(k) and 1 <= k <= config.timesteps, "sltt_k", k,
               f"must be an integer with 1 <= sltt_k <= timesteps ({config.timesteps})")
    frames = (sequence_lengths or {}).get(config.dataset)
    _check(frames is None or config.timesteps == frames, "timesteps", config.timesteps,
           f"dataset {config.dataset!r} is a sequence of {frames} frames per example, used as given; "
           f"set timesteps={frames}")
    for field in ("batch_size", "eval_batch_size"):
        value = config[field]
        _check(_is_int(value) and value >= 1 and value % device_count == 0, field, value,
               f"must be a positive multiple of the device count ({device_count})")
    _check(_is_int(config.num_epochs) and config.num_epochs >= 1, "num_epochs", config.num_epochs,
           "must be an integer >= 1")
    _check(_is_int(config.seed) and 0 <= config.seed < 2**31, "seed", config.seed, "must be an integer in [0, 2**31)")
    for field in ("max_steps", "max_eval_steps"):
        _check(_is_int(config[field]) and config[field] >= 0, field, config[field], "must be an integer >= 0 (0: no cap)")
    _check(_is_int(config.checkpoint_every_epochs) and config.checkpoint_every_epochs >= 1,
           "checkpoint_every_epochs", config.checkpoint_every_epochs, "must be an integer >= 1")
    _check(config.dtype in DTYPES, "dtype", config.dtype, f"must be one of {DTYPES}")
    opt = config.optimizer
    _check(opt.name in OPTIMIZERS, "optimizer.name", opt.name, f"must be one of {OPTIMIZERS}")
    _check(opt.learning_rate > 0, "optimizer.learning_rate", opt.learning_rate, "must be > 0")
    _check(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "must lie in [0, 1)")
    _check(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "must be >= 0")
    neuron_fields = {f.name for f in dataclasses.fields(LIFParams)}
    _check(set(config.neuron) == neuron_fields, "neuron", sorted(config.neuron), f"must have the fields {sorted(neuron_fields)}")
    try:
        LIFParams(**config.neuron)
    except ValueError as error:
        raise ConfigError(f"config.neuron.{error}") from None
    shape = (input_shapes or {}).get(config.dataset)
    if shape is not None:
        _check_model_input(config, tuple(shape))


def _check_model_input(config: Any, shape: tuple[int, ...]) -> None:
    """ConfigError naming model and input shape if the model fails on one example of that shape."""
    try:
        model = models.create(config.model, num_classes=10, in_channels=shape[-1], model_kwargs=model_kwargs(config),
                              **config.neuron)
    except (TypeError, ValueError) as error:  # e.g. a model_kwargs key its builder does not take
        raise ConfigError(f"config.model_kwargs={model_kwargs(config)!r} is invalid for model {config.model!r}: "
                          f"{str(error).splitlines()[0]}") from None
    try:
        jax.eval_shape(lambda: models.init(model, jax.random.key(0), jnp.zeros((1,) + shape),
                                           timesteps=config.timesteps))
    except Exception as error:  # whatever the model raises on a too small or oddly shaped input
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:160]
        raise ConfigError(f"config.model={config.model!r} cannot take the input of dataset {config.dataset!r}, "
                          f"examples of shape {list(shape)} ({reason})") from None
