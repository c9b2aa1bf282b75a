"""Input pipelines: TFDS + tf.data, yielding NumPy batches for JAX.

    import ratebp_jax.data as data     # registers the "sklearn_digits", "cifar10_dvs" and "shd" TFDS builders
    data.prepare("cifar10")            # once: download and build (python -m experiments.prepare)
    split = data.make_split("cifar10", train=True, batch_size=128, seed=0)
    for batch in split.epoch(epoch):   # {"image" float32 [B, H, W, C], "label" int32 [B],
        ...                            #  "mask" float32 [B]}

Static-image datasets yield "image" [B, H, W, C] (repeated at every time
step); the datasets of SEQUENCE_LENGTHS yield sequences [B, T, H, W, C] with a
fixed T, used as given, so a training config's ``timesteps`` must equal that
T: "cifar10_dvs" [B, 10, 48, 48, 2] event frames, "shd" [B, 100, 1, 700, 1]
spike counts, and the temporal digits of SPEC §8, "digits_rows"
[B, 8, 1, 8, 1] (one image row per step) and "digits_latency"
[B, 8, 8, 8, 1] (one spike per pixel).

See ``pipeline`` for determinism (same (seed, epoch) -> same batches;
``start_step`` resumes mid-epoch) and per-process sharding, and the dataset
modules (``digits``, ``temporal``, ``cifar``, ``imagenet``, ``dvs``, ``shd``),
each declaring its source and preprocessing as a ``pipeline.Dataset``.
"""

from __future__ import annotations

from ratebp_jax.data import cifar, digits, dvs, imagenet, pipeline, shd, temporal
from ratebp_jax.data.pipeline import DataNotFoundError, Split, hide_gpus_from_tensorflow

_DATASETS = {d.name: d for d in (digits.DATASET, *temporal.DATASETS, *cifar.DATASETS, imagenet.DATASET,
                                 dvs.DATASET, shd.DATASET)}
DATASETS = tuple(_DATASETS)
# Datasets of sequences: name -> frames per example (T of "image" [B, T, H, W, C]).
SEQUENCE_LENGTHS = {name: d.input_shape[0] for name, d in _DATASETS.items() if len(d.input_shape) == 4}
# The shape of one example: [H, W, C], or [T, H, W, C] for a sequence.
INPUT_SHAPES = {name: tuple(d.input_shape) for name, d in _DATASETS.items()}

__all__ = ["DATASETS", "DataNotFoundError", "INPUT_SHAPES", "SEQUENCE_LENGTHS", "Split", "make_split", "prepare"]


def _dataset(name: str) -> pipeline.Dataset:
    if name not in _DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    return _DATASETS[name]


def prepare(name: str, *, data_dir: str | None = None, manual_dir: str | None = None):
    """Downloads or builds dataset ``name`` into data_dir (None: TFDS's default); a no-op once done.

    manual_dir: where the files downloaded by hand are (imagenet2012,
    cifar10_dvs, shd); default DATA_DIR/downloads/manual. Returns the TFDS builder.
    Raises DataNotFoundError naming manual_dir and the files to put there.
    """
    hide_gpus_from_tensorflow()
    return pipeline.prepare(_dataset(name), data_dir=data_dir, manual_dir=manual_dir)


def make_split(name: str, *, train: bool, batch_size: int, seed: int = 0, data_dir: str | None = None,
               augment: bool = True, process_index: int | None = None,
               process_count: int | None = None) -> Split:
    """One process's train or eval split of dataset ``name``, from prepared data.

    Args:
      name: one of DATASETS.
      train: True: the training split, shuffled by (seed, epoch), augmented
        (if ``augment``), remainder dropped. False: the test/validation split
        in fixed order, last batch padded (mask 0).
      batch_size: this process's batch size (global batch / process count).
      seed: shuffling and augmentation seed.
      data_dir: TFDS data directory (None: TFDS default, $TFDS_DATA_DIR or
        ~/tensorflow_datasets), where ``prepare`` put the dataset.
      augment: apply the training augmentation (train only).
      process_index, process_count: this process's share of each global
        batch (see ``pipeline``); default jax.process_index() / jax.process_count().

    Returns:
      A Split; ``split.epoch(e, start_step=0)`` yields the batches;
      ``split.input_shape`` is (H, W, C), or (T, H, W, C) for a sequence.

    Raises:
      ValueError: unknown dataset, batch_size < 1, bad process index.
      DataNotFoundError: not prepared in data_dir; the one-line message names
        the directory and the prepare command.
    """
    dataset = _dataset(name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if process_index is None or process_count is None:
        import jax  # only for the default process topology

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    hide_gpus_from_tensorflow()
    return pipeline.make_split(dataset, train=train, batch_size=batch_size, seed=seed, data_dir=data_dir,
                               augment=augment, process_index=process_index, process_count=process_count)
