"""Dataset-independent machinery: prepare a TFDS builder, shard a split per
process, order an epoch, augment, batch, pad.

A ``Split`` is one process's view of one split at one batch size. Iterating
``split.epoch(e)`` yields host batches (NumPy, batch-major NHWC):

    {"image": float32 [B, H, W, C] normalised,
     "label": int32 [B],
     "mask":  float32 [B]   1 for a real example, 0 for eval padding}

Determinism. Everything random is a pure function of (seed, epoch):
- the order: in-memory splits permute their examples with
  ``stateless_shuffle`` keyed by (seed, epoch); streamed splits (ImageNet) key
  TFDS's file shuffle and a tf.data shuffle buffer by the same pair;
- augmentation: the example at position ``p`` of the epoch's order gets the
  stateless seed fold_in(fold_in(fold_in((seed, epoch), AUGMENT), process), p).
So the same (seed, epoch) gives identical batches after any restart, and
``epoch(e, start_step=k)`` skips k·B examples *before* augmenting, giving the
batches k, k+1, ... of ``epoch(e)`` without computing the skipped ones.

Sharding. Each process reads ``tfds.even_splits(split, process_count)[index]``.
Train shards drop the remainder so every process runs the same number of
steps; eval shards keep every example, and a process with a shorter shard
yields extra all-padding batches so all processes run the same number of eval
steps (a multi-host pmap needs every process in every step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import socket
import urllib.parse
import urllib.request
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Preprocessing of one example: (raw image, stateless seed [2]) -> float32 [H, W, C].
Preprocess = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
# The examples of one epoch in order: epoch -> Dataset of (raw image, label).
EpochSource = Callable[[int], tf.data.Dataset]

_SHUFFLE_STREAM = 0  # stream ids folded into (seed, epoch) to derive independent keys
_AUGMENT_STREAM = 1
_DOWNLOAD_SOCKET_TIMEOUT_S = 30  # a stalled connection fails after this long, not never
_PROBE_TIMEOUT_S = 5  # reachability check of a download host before downloading


class DataNotFoundError(FileNotFoundError):
    """A dataset is not prepared where we looked and could not be prepared."""


def hide_gpus_from_tensorflow() -> None:
    """Keeps TensorFlow (tf.data) off accelerators, leaving their memory to JAX.

    Must run before TensorFlow initialises its devices; later it is a no-op.
    """
    with contextlib.suppress(RuntimeError):  # devices already initialised
        tf.config.set_visible_devices([], "GPU")


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _downloads_are_mocked() -> bool:
    """True inside ``tfds.testing.mock_data``, whose download_and_prepare is a no-op."""
    return tfds.core.DatasetBuilder.download_and_prepare.__module__.startswith("tensorflow_datasets.testing")


def unreachable_reason(url: str, timeout_s: float = _PROBE_TIMEOUT_S) -> str | None:
    """None if a TCP connection to ``url``'s host (or its proxy) opens in time, else why not.

    TFDS retries a failed download 10 times with exponential backoff (~200 s),
    so without this check an offline machine would wait minutes to fail.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        return f"cannot reach {host}:{port} ({type(error).__name__}: {error})"
    return None


def prepared_builder(tfds_name: str, *, dataset: str, data_dir: str | None,
                     how_to_prepare: str, manual_dir: str | None = None,
                     download_url: str | None = None):
    """Returns the TFDS builder of ``tfds_name``, preparing it if needed.

    If the data are not in ``data_dir`` (None: the TFDS default), tries
    ``download_and_prepare`` once (manual downloads read from ``manual_dir``,
    default DATA_DIR/downloads/manual), after checking that ``download_url``'s
    host is reachable when the dataset downloads. On any failure raises
    DataNotFoundError naming the dataset, the directory searched and
    ``how_to_prepare`` (formatted with ``data_dir`` and ``manual_dir``).
    """
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    manual_dir = manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")
    offline = None if (download_url is None or _downloads_are_mocked()) else unreachable_reason(download_url)
    try:
        if offline:
            raise ConnectionError(f"no network for the download: {offline}")
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as error:  # any failure means: not available here
        how_to_prepare = how_to_prepare.format(data_dir=builder.data_dir_root, manual_dir=manual_dir)
        if isinstance(error, ModuleNotFoundError) and error.name == "importlib_resources":
            how_to_prepare += ("\nTFDS 4.9.10 needs `pip install importlib_resources` to prepare "
                               "datasets on Python >= 3.9 (tensorflow/datasets#11212).")
        raise DataNotFoundError(
            f"Dataset {dataset!r} (TFDS {tfds_name!r}) is not prepared in {builder.data_dir} "
            f"(data_dir={builder.data_dir_root}) and preparing it failed: "
            f"{type(error).__name__}: {error}\nTo prepare it: {how_to_prepare}") from error
    return builder


def process_shard(split: str, *, train: bool, process_index: int, process_count: int):
    """This process's part of ``split``: train drops the remainder, eval keeps it."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    return tfds.even_splits(split, n=process_count, drop_remainder=train)[process_index]


def count_examples(builder, split) -> int:
    """Examples in ``split`` (any TFDS split spec), from the dataset's cardinality."""
    cardinality = int(builder.as_dataset(split=split).cardinality())
    if cardinality < 0:
        raise ValueError(f"cardinality of {builder.name} {split} is unknown")
    return cardinality


def load_in_memory(builder, split) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a whole split: (images uint8 [N, H, W, C], labels int32 [N]), file order."""
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    images, labels = [], []
    for batch in tfds.as_numpy(dataset.map(lambda ex: (ex["image"], ex["label"])).batch(4096)):
        images.append(batch[0])
        labels.append(batch[1].astype(np.int32))
    if not images:
        raise DataNotFoundError(f"split {split} of {builder.name} in {builder.data_dir} is empty")
    return np.concatenate(images), np.concatenate(labels)


def epoch_key(seed: int, epoch: int, stream: int) -> tf.Tensor:
    """Stateless key [2] int64 of one random stream of one epoch."""
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, epoch], tf.int64), stream)


def in_memory_source(images: np.ndarray, labels: np.ndarray, *, shuffle: bool, seed: int) -> EpochSource:
    """Epoch source over arrays in memory; train order = stateless permutation of (seed, epoch)."""
    images = tf.constant(images)
    labels = tf.constant(labels)

    def source(epoch: int) -> tf.data.Dataset:
        order = tf.range(tf.shape(labels)[0])
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, epoch_key(seed, epoch, _SHUFFLE_STREAM))
        return tf.data.Dataset.from_tensor_slices((tf.gather(images, order), tf.gather(labels, order)))

    return source


@dataclasses.dataclass(frozen=True)
class Split:
    """One process's batches of one split; see the module docstring.

    Attributes:
      name: dataset name ("digits", "cifar10", ...).
      train: shuffled + augmented + remainder dropped, else fixed order + padded.
      batch_size: this process's batch size.
      num_examples: examples in this process's shard.
      steps_per_epoch: train: num_examples // batch_size; eval: batches needed
        by the largest process shard (ceil), so all processes agree.
      num_classes, input_shape: label count and per-example (H, W, C).
    """

    name: str
    train: bool
    batch_size: int
    num_examples: int
    steps_per_epoch: int
    num_classes: int
    input_shape: tuple[int, int, int]
    seed: int
    process_index: int
    source: EpochSource = dataclasses.field(repr=False)
    preprocess: Preprocess = dataclasses.field(repr=False)

    @functools.cached_property
    def _traced_preprocess(self) -> Preprocess:
        """``preprocess`` traced once per Split: every epoch's map calls the same graph."""
        return tf.function(self.preprocess)

    def dataset(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
        """tf.data pipeline of (image float32 [B, H, W, C], label int32 [B]) batches.

        Eval's last batch may be short here; ``epoch`` pads it.
        """
        augment_key = tf.random.experimental.stateless_fold_in(
            epoch_key(self.seed, epoch, _AUGMENT_STREAM), self.process_index)

        def preprocess(position, example):
            image, label = example
            example_seed = tf.random.experimental.stateless_fold_in(augment_key, position)
            image = tf.ensure_shape(self._traced_preprocess(image, example_seed), self.input_shape)
            return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

        dataset = self.source(epoch).enumerate().skip(start_step * self.batch_size)
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
        for _ in range(steps, self.steps_per_epoch):  # eval only: shorter process shard
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


def steps_per_epoch(*, train: bool, local_examples: int, total_examples: int,
                    batch_size: int, process_count: int) -> int:
    """Train: full batches of this shard. Eval: batches for the largest shard.

    Eval uses the larger of this shard's and the largest even split's count
    (they agree on real data; under ``tfds.testing.mock_data`` every shard
    yields the same number of fake examples).
    """
    if train:
        if local_examples < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {local_examples} training examples "
                             "of this process's shard: no full batch")
        return local_examples // batch_size
    largest = max(local_examples, math.ceil(total_examples / process_count))
    return math.ceil(largest / batch_size)


def in_memory_split(builder, *, name: str, split: str, train: bool, batch_size: int, seed: int,
                    process_index: int, process_count: int, preprocess: Preprocess,
                    input_shape: tuple[int, int, int]) -> Split:
    """A Split whose shard is decoded once into memory (digits, CIFAR)."""
    shard = process_shard(split, train=train, process_index=process_index, process_count=process_count)
    images, labels = load_in_memory(builder, shard)
    total = count_examples(builder, split)
    return Split(
        name=name, train=train, batch_size=batch_size, num_examples=len(labels),
        steps_per_epoch=steps_per_epoch(train=train, local_examples=len(labels), total_examples=total,
                                        batch_size=batch_size, process_count=process_count),
        num_classes=builder.info.features["label"].num_classes, input_shape=input_shape,
        seed=seed, process_index=process_index,
        source=in_memory_source(images, labels, shuffle=train, seed=seed), preprocess=preprocess)
