"""Dataset-independent machinery: open a prepared TFDS dataset, shard a split
per process, order an epoch, augment, batch, pad.

A dataset module declares a ``Dataset`` (its TFDS builder, splits, source and
preprocessing); ``make_split`` turns it into a ``Split``, one process's view
of one split at one batch size. Iterating ``split.epoch(e)`` yields host
batches (NumPy, batch-major NHWC):

    {"image": float32 [B, H, W, C] normalized,
     "label": int32 [B],
     "mask":  float32 [B]   1 for a real example, 0 for eval padding}

Determinism. Everything random is a pure function of (seed, epoch):
- the order: in-memory splits permute their examples with
  ``stateless_shuffle`` keyed by (seed, epoch); streamed splits (ImageNet) key
  TFDS's file shuffle and a tf.data shuffle buffer by the same pair;
- augmentation: the example at position ``g`` of the epoch's global order gets
  the stateless seed fold_in(fold_in((seed, epoch), AUGMENT), g).
So the same (seed, epoch) gives identical batches after any restart, and
``epoch(e, start_step=k)`` skips k·B examples *before* augmenting, giving the
batches k, k+1, ... of ``epoch(e)`` without computing the skipped ones.

Sharding over processes. The global batch b is the positions [b·G, (b+1)·G)
of the epoch's order, G = B · process_count, and process p reads its p-th
slice of B (``Shard.positions``). In-memory splits (every dataset but
ImageNet) hold the whole split in every process, so a run on P processes
feeds each device exactly what a one-process run with as many devices feeds
it: the result does not depend on the number of hosts. Streamed splits read
``tfds.even_splits(split, process_count)[p]`` instead (no process reads all of
ImageNet), keyed by the same seeds but with another order per host count.
Train epochs drop the last partial global batch; eval epochs keep every
example, padding (mask 0) the short batches, so all processes run the same
number of steps (a multi-host step needs every process).

Preparation is not done here: ``prepare`` is what ``python -m
experiments.prepare`` calls; ``make_split`` only opens prepared data (the
embedded digits excepted, which build themselves in about a second).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Preprocessing of one example: (raw example, stateless seed [2]) -> float32 [H, W, C] (or [T, H, W, C]).
Preprocess = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
# One process's examples of one epoch in order: epoch -> Dataset of (global position int64,
# raw example, label); the position in the epoch's global order keys the augmentation.
EpochSource = Callable[[int], tf.data.Dataset]

_SHUFFLE_STREAM = 0  # stream ids folded into (seed, epoch) to derive independent keys
_AUGMENT_STREAM = 1
_DECODE_BATCH = 256  # examples decoded at a time while loading a shard into memory


class DataNotFoundError(FileNotFoundError):
    """A dataset is not prepared where we looked (or its manual files are missing)."""


def hide_gpus_from_tensorflow() -> None:
    """Keeps TensorFlow (tf.data) off accelerators, leaving their memory to JAX.

    Must run before TensorFlow initialises its devices; later it is a no-op.
    """
    with contextlib.suppress(RuntimeError):  # devices already initialised
        tf.config.set_visible_devices([], "GPU")


def epoch_key(seed: int, epoch: int, stream: int) -> tf.Tensor:
    """Stateless key [2] int64 of one random stream of one epoch."""
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, epoch], tf.int64), stream)


def count_examples(builder, split) -> int:
    """Examples in ``split`` (any TFDS split spec), from the dataset's cardinality."""
    cardinality = int(builder.as_dataset(split=split).cardinality())
    if cardinality < 0:
        raise ValueError(f"cardinality of {builder.name} {split} is unknown")
    return cardinality


def load_in_memory(builder, split) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a split in file order: (examples [N, ...] as stored, labels int32 [N]).

    The arrays are filled in place, a batch of _DECODE_BATCH at a time, so the
    peak memory is the split plus one batch (no concatenated copy).
    """
    count = count_examples(builder, split)
    if count == 0:
        raise DataNotFoundError(f"split {split} of {builder.name} in {builder.data_dir} is empty")
    dataset = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True).batch(_DECODE_BATCH)
    examples = labels = None
    for start, (batch, batch_labels) in zip(range(0, count, _DECODE_BATCH), tfds.as_numpy(dataset)):
        if examples is None:
            examples = np.empty((count, *batch.shape[1:]), batch.dtype)
            labels = np.empty((count,), np.int32)
        examples[start:start + len(batch)] = batch
        labels[start:start + len(batch)] = batch_labels
    return examples, labels


@dataclasses.dataclass(frozen=True)
class Shard:
    """One process's share of each global batch: rows [index·batch_size, (index+1)·batch_size)."""

    index: int  # this process
    count: int  # processes
    batch_size: int  # rows per process per global batch
    train: bool  # drop the last partial global batch (eval keeps every example)

    def positions(self, total: int) -> np.ndarray:
        """int64 [n]: the positions of an epoch's global order of ``total`` examples that this process reads."""
        global_batch = self.batch_size * self.count
        positions = np.arange(total // global_batch * global_batch if self.train else total)
        return positions[positions % global_batch // self.batch_size == self.index]


def in_memory_source(builder, split: str, shard: Shard, *, shuffle: bool, seed: int) -> EpochSource:
    """Epoch source over the whole split decoded once into memory (digits, CIFAR, CIFAR10-DVS).

    Train order: the stateless permutation of (seed, epoch), the same in every
    process; this process gathers the examples at its ``shard.positions``, so
    no epoch copies the whole array.
    """
    examples, labels = (tf.constant(array) for array in load_in_memory(builder, split))
    positions = tf.constant(shard.positions(int(labels.shape[0])), tf.int64)

    def source(epoch: int) -> tf.data.Dataset:
        order = tf.range(tf.shape(labels, out_type=tf.int64)[0])
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, epoch_key(seed, epoch, _SHUFFLE_STREAM))

        def read(position):
            index = tf.gather(order, position)
            return position, tf.gather(examples, index), tf.gather(labels, index)
        return tf.data.Dataset.from_tensor_slices(positions).map(read)

    return source


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a dataset module declares: where its examples come from and how each is preprocessed.

    Attributes:
      name: our name ("digits", "cifar10", ...), the config's dataset field.
      tfds_name: the TFDS builder (with its default config).
      splits: (train split, eval split) names of the builder.
      input_shape: per-example shape after preprocessing: (H, W, C), or
        (T, H, W, C) for a sequence.
      train_preprocess: augmentation and normalization of a training example.
      eval_preprocess: normalization only; also training with augment=False.
      source: (builder, split name, Shard, shuffle=, seed=) -> EpochSource.
      embedded: the data need no download; a missing dataset is built on
        first use instead of asking for ``experiments.prepare``.
    """

    name: str
    tfds_name: str
    splits: tuple[str, str]
    input_shape: tuple[int, ...]
    train_preprocess: Preprocess
    eval_preprocess: Preprocess
    source: Callable[..., EpochSource] = in_memory_source
    embedded: bool = False


def prepare(dataset: Dataset, *, data_dir: str | None = None, manual_dir: str | None = None):
    """Downloads or builds ``dataset`` into data_dir with TFDS (its progress bars); returns the builder.

    A no-op for a prepared dataset. A dataset whose files are downloaded by
    hand (ImageNet, CIFAR10-DVS) is read from manual_dir (default
    DATA_DIR/downloads/manual).

    Raises:
      DataNotFoundError: manual_dir is missing or empty; the message says
        which files to put there and where to get them.
    """
    builder = tfds.builder(dataset.tfds_name, data_dir=data_dir)
    if builder.data_path.exists():
        return builder
    manual_dir = manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")  # TFDS's default
    instructions = builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    if instructions and not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
        raise DataNotFoundError(
            f"{dataset.name!r} is built from files you download by hand; put them in {manual_dir} "
            f"(or pass another manual_dir):\n{instructions.strip()}")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except FileExistsError:  # another process (of a multi-host run) finished the same build first
        if not builder.data_path.exists():
            raise
        builder = tfds.builder(dataset.tfds_name, data_dir=data_dir)
    return builder


def prepared_builder(dataset: Dataset, data_dir: str | None):
    """The TFDS builder of ``dataset``, prepared in data_dir (None: TFDS's default).

    Raises:
      DataNotFoundError: not prepared there; the one-line message names the
        directory searched and the prepare command to run.
    """
    if dataset.embedded:
        return prepare(dataset, data_dir=data_dir)
    builder = tfds.builder(dataset.tfds_name, data_dir=data_dir)
    if not builder.data_path.exists():  # TFDS's own test, finished builds only (as is_prepared, without its warning)
        raise DataNotFoundError(
            f"dataset {dataset.name!r} is not prepared in {builder.data_dir_root}; prepare it once with: "
            f"python -m experiments.prepare --dataset {dataset.name} --data_dir {builder.data_dir_root}")
    return builder


@dataclasses.dataclass(frozen=True)
class Split:
    """One process's batches of one split; see the module docstring.

    Attributes:
      name: dataset name ("digits", "cifar10", ...).
      train: shuffled + augmented + remainder dropped, else fixed order + padded.
      batch_size: this process's batch size.
      num_examples: examples in the whole split (all processes).
      steps_per_epoch: global batches per epoch, the same in every process:
        train num_examples // G, eval ceil(num_examples / G), G the global batch.
      num_classes, input_shape: label count and per-example (H, W, C) or (T, H, W, C).
    """

    name: str
    train: bool
    batch_size: int
    num_examples: int
    steps_per_epoch: int
    num_classes: int
    input_shape: tuple[int, ...]
    seed: int
    source: EpochSource = dataclasses.field(repr=False)
    preprocess: Preprocess = dataclasses.field(repr=False)

    @functools.cached_property
    def _traced_preprocess(self) -> Preprocess:
        """``preprocess`` traced once per Split: every epoch's map calls the same graph."""
        return tf.function(self.preprocess)

    def dataset(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
        """tf.data pipeline of (image float32 [B, ...input_shape], label int32 [B]) batches.

        Eval's last batch may be short here; ``epoch`` pads it.
        """
        augment_key = epoch_key(self.seed, epoch, _AUGMENT_STREAM)

        def preprocess(position, image, label):
            example_seed = tf.random.experimental.stateless_fold_in(augment_key, position)
            image = tf.ensure_shape(self._traced_preprocess(image, example_seed), self.input_shape)
            return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

        dataset = self.source(epoch).skip(start_step * self.batch_size)
        if self.train:
            dataset = dataset.take((self.steps_per_epoch - start_step) * self.batch_size)
        dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        dataset = dataset.batch(self.batch_size, drop_remainder=self.train)
        options = tf.data.Options()
        options.deterministic = True
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yields batches start_step..steps_per_epoch-1 of ``epoch`` (see module doc)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        steps = start_step
        for images, labels in tfds.as_numpy(self.dataset(epoch, start_step)):
            yield self._padded(images, labels)
            steps += 1
        empty_image = np.zeros((0, *self.input_shape), np.float32)
        for _ in range(steps, self.steps_per_epoch):  # eval only: this process's rows ran out
            yield self._padded(empty_image, np.zeros((0,), np.int32))

    def _padded(self, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Pads a short eval batch to batch_size with zero images, label 0, mask 0."""
        real = labels.shape[0]
        missing = self.batch_size - real
        mask = np.concatenate([np.ones(real, np.float32), np.zeros(missing, np.float32)])
        if missing:
            images = np.concatenate([images, np.zeros((missing, *self.input_shape), np.float32)])
            labels = np.concatenate([labels, np.zeros(missing, np.int32)])
        return {"image": images, "label": labels, "mask": mask}


def make_split(dataset: Dataset, *, train: bool, batch_size: int, seed: int, data_dir: str | None,
               augment: bool, process_index: int, process_count: int) -> Split:
    """This process's Split of ``dataset`` (see ``ratebp_jax.data.make_split`` for the arguments)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    builder = prepared_builder(dataset, data_dir)
    split = dataset.splits[0] if train else dataset.splits[1]
    total, global_batch = count_examples(builder, split), batch_size * process_count
    if train and total < global_batch:
        raise ValueError(f"the global batch of {global_batch} (batch_size {batch_size} × {process_count} "
                         f"processes) exceeds the {total} training examples: no full batch")
    shard = Shard(index=process_index, count=process_count, batch_size=batch_size, train=train)
    return Split(
        name=dataset.name, train=train, batch_size=batch_size, num_examples=total,
        steps_per_epoch=total // global_batch if train else math.ceil(total / global_batch),
        num_classes=builder.info.features["label"].num_classes, input_shape=dataset.input_shape, seed=seed,
        source=dataset.source(builder, split, shard, shuffle=train, seed=seed),
        preprocess=dataset.train_preprocess if (train and augment) else dataset.eval_preprocess)
