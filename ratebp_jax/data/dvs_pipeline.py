"""CIFAR10-DVS batches for training: TFDS "cifar10_dvs" (see ``dvs``), held in memory.

    split = make_split(train=True, batch_size=128, seed=0, data_dir=None, manual_dir="~/dvs",
                       augment=True, process_index=0, process_count=1)
    batch = next(split.epoch(0))   # {"image": float32 [B, 10, 48, 48, 2], "label": int32 [B],
                                   #  "mask": float32 [B]}

Each example is a *sequence* of NUM_FRAMES = 10 event-count frames, which the
training methods use as given, so a config's ``timesteps`` must equal 10
(``SEQUENCE_LENGTH``; ``configuration.validate`` checks it). Split "tebn"
(the builder's default): samples 0-99 of each class test (1,000), the rest
train (9,000).
Train: ``dvs.augment`` (h-flip p = 0.5, roll by up to ±5 px, the same for all
frames) with the pipeline's per-example stateless seeds, so batches are a pure
function of (seed, epoch). Eval: the frames as stored, no augmentation.
Memory: a shard is decoded once into host memory, 184 KB per example
(float32 frames): about 1.7 GB for the full train split, 0.2 GB for test.
Preparation: if data_dir has no prepared "cifar10_dvs", it is built from the
raw archives in manual_dir (default DATA_DIR/downloads/manual), reading every
recording once.
"""

from __future__ import annotations

import textwrap

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ratebp_jax.data import dvs, pipeline

TFDS_NAME = "cifar10_dvs"  # default builder config "tebn"
SEQUENCE_LENGTH = dvs.NUM_FRAMES
INPUT_SHAPE = (dvs.NUM_FRAMES, dvs.FRAME_SIZE, dvs.FRAME_SIZE, 2)  # [T, H, W, polarity]
_DECODE_BATCH = 256  # examples decoded at a time while loading a shard (~47 MB)

HOW_TO_PREPARE = (
    "the raw recordings are read from manual_dir, here {manual_dir}.\n"
    + textwrap.dedent(dvs.Cifar10Dvs.MANUAL_DOWNLOAD_INSTRUCTIONS).strip()
    + "\nThen rerun with manual_dir=<that folder> (config: --config.manual_dir=...); the dataset is "
    "prepared once into {data_dir}, or build it yourself with `python -c \"import ratebp_jax.data, "
    "tensorflow_datasets as tfds; tfds.builder('cifar10_dvs', data_dir='{data_dir}').download_and_prepare("
    "download_config=tfds.download.DownloadConfig(manual_dir='{manual_dir}'))\"`.")


def load_frames(builder, shard) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a shard in file order: (frames float32 [N, 10, 48, 48, 2], labels int32 [N])."""
    count = pipeline.count_examples(builder, shard)
    if count == 0:
        raise pipeline.DataNotFoundError(f"split {shard} of {builder.name} in {builder.data_dir} is empty")
    frames = np.empty((count, *INPUT_SHAPE), np.float32)  # filled in place: no concatenated copy
    labels = np.empty((count,), np.int32)
    dataset = builder.as_dataset(split=shard, shuffle_files=False).batch(_DECODE_BATCH)
    for start, batch in zip(range(0, count, _DECODE_BATCH), tfds.as_numpy(dataset)):
        frames[start:start + len(batch["label"])] = batch["frames"]
        labels[start:start + len(batch["label"])] = batch["label"]
    return frames, labels


def indexed_source(frames: np.ndarray, labels: np.ndarray, *, shuffle: bool, seed: int) -> pipeline.EpochSource:
    """Epoch source over arrays in memory, gathering one example at a time.

    Same order as ``pipeline.in_memory_source`` (train: the stateless
    permutation of (seed, epoch)) without copying the whole array each epoch.
    """
    frames, labels = tf.constant(frames), tf.constant(labels)

    def source(epoch: int) -> tf.data.Dataset:
        order = tf.range(tf.shape(labels)[0])
        if shuffle:
            key = pipeline.epoch_key(seed, epoch, pipeline._SHUFFLE_STREAM)  # the package's order stream
            order = tf.random.experimental.stateless_shuffle(order, key)
        return tf.data.Dataset.from_tensor_slices(order).map(
            lambda i: (tf.gather(frames, i), tf.gather(labels, i)))

    return source


def train_preprocess(frames: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """float32 [10, 48, 48, 2] -> the same shape, flipped and rolled (``dvs.augment``)."""
    return dvs.augment(frames, seed)


def eval_preprocess(frames: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """float32 [10, 48, 48, 2] unchanged; ``seed`` unused."""
    del seed
    return frames


def make_split(*, train: bool, batch_size: int, seed: int, data_dir: str | None, manual_dir: str | None,
               augment: bool, process_index: int, process_count: int) -> pipeline.Split:
    """Split of "cifar10_dvs" (train or test), prepared from ``manual_dir`` on first use.

    Raises:
      DataNotFoundError: not prepared in data_dir and no recordings in
        manual_dir; the message names both and where to download the archives.
    """
    builder = pipeline.prepared_builder(TFDS_NAME, dataset=TFDS_NAME, data_dir=data_dir, manual_dir=manual_dir,
                                        how_to_prepare=HOW_TO_PREPARE)
    split = "train" if train else "test"
    shard = pipeline.process_shard(split, train=train, process_index=process_index, process_count=process_count)
    frames, labels = load_frames(builder, shard)
    total = pipeline.count_examples(builder, split)
    return pipeline.Split(
        name=TFDS_NAME, train=train, batch_size=batch_size, num_examples=len(labels),
        steps_per_epoch=pipeline.steps_per_epoch(train=train, local_examples=len(labels), total_examples=total,
                                                 batch_size=batch_size, process_count=process_count),
        num_classes=builder.info.features["label"].num_classes, input_shape=INPUT_SHAPE,
        seed=seed, process_index=process_index,
        source=indexed_source(frames, labels, shuffle=train, seed=seed),
        preprocess=train_preprocess if (train and augment) else eval_preprocess)
