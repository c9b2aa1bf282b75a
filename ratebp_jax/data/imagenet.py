"""ImageNet-1k (TFDS "imagenet2012", manual download), streamed from disk.

Train: random-resized-crop to 224 (area fraction in (0.08, 1), aspect ratio
in (3/4, 4/3), torchvision's RandomResizedCrop sampling, decoding only the
crop) -> horizontal flip (p = 1/2) -> / 255 -> normalization.
Eval: resize the shorter side to 256 -> central 224×224 crop -> / 255 ->
normalization. Bilinear, antialiased resizing; output float32 [224, 224, 3].
Images stay JPEG-encoded (``SkipDecoding``) until preprocessing, so skipped
examples (``start_step``) are never decoded.
Preparing it (``python -m experiments.prepare --dataset imagenet2012``) needs
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org in the
manual_dir; TFDS extracts them once, which takes hours.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ratebp_jax.data import pipeline
from ratebp_jax.data.augment import random_flip_left_right

TFDS_NAME = "imagenet2012"
IMAGE_SIZE = 224
RESIZE_SIZE = 256
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
MEAN = (0.485, 0.456, 0.406)  # standard ImageNet RGB statistics of [0, 1] pixels
STD = (0.229, 0.224, 0.225)
AREA_RANGE = (0.08, 1.0)
RATIO_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
SHUFFLE_BUFFER = 8192  # train shuffle buffer of encoded JPEGs (~1 GB)


def random_resized_crop_window(height, width, seed: tf.Tensor, *, area_range=AREA_RANGE,
                               ratio_range=RATIO_RANGE, attempts: int = CROP_ATTEMPTS) -> tf.Tensor:
    """Crop window [top, left, crop_height, crop_width] (int32 [4]) in an image of height × width.

    torchvision's RandomResizedCrop: up to ``attempts`` draws of area fraction
    (uniform) and aspect ratio (log-uniform); the first that fits is used,
    its position uniform. If none fits: the largest central crop whose
    aspect ratio is clipped into ``ratio_range``.
    """
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area_seed, ratio_seed, position_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    area = height_f * width_f * tf.random.stateless_uniform([attempts], area_seed, *area_range)
    log_ratio = tf.random.stateless_uniform([attempts], ratio_seed, math.log(ratio_range[0]),
                                            math.log(ratio_range[1]))
    ratio = tf.exp(log_ratio)
    crop_w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    position = tf.random.stateless_uniform([2], position_seed)
    crop_h, crop_w = crop_h[first], crop_w[first]
    top = tf.cast(position[0] * tf.cast(height - crop_h + 1, tf.float32), tf.int32)
    left = tf.cast(position[1] * tf.cast(width - crop_w + 1, tf.float32), tf.int32)
    sampled = tf.stack([tf.minimum(top, height - crop_h), tf.minimum(left, width - crop_w), crop_h, crop_w])
    return tf.cond(tf.reduce_any(fits), lambda: sampled,
                   lambda: _central_fallback_window(height, width, ratio_range))


def _central_fallback_window(height, width, ratio_range) -> tf.Tensor:
    """Largest central crop with aspect ratio (w/h) clipped into ratio_range."""
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ratio = width_f / height_f
    crop_w = tf.where(ratio > ratio_range[1], tf.round(height_f * ratio_range[1]), width_f)
    crop_h = tf.where(ratio < ratio_range[0], tf.round(width_f / ratio_range[0]), height_f)
    crop_h, crop_w = tf.cast(crop_h, tf.int32), tf.cast(crop_w, tf.int32)
    return tf.stack([(height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w])


def normalize(image: tf.Tensor) -> tf.Tensor:
    """float32 [H, W, 3] in 0..255 -> (x / 255 - MEAN) / STD."""
    return (image / 255.0 - tf.constant(MEAN)) / tf.constant(STD)


def train_preprocess(jpeg: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG (string scalar) -> float32 [224, 224, 3], random crop + flip + normalized."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.image.extract_jpeg_shape(jpeg)
    window = random_resized_crop_window(shape[0], shape[1], crop_seed)
    image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear", antialias=True)
    return normalize(random_flip_left_right(image, flip_seed))


def resize_shorter_and_centre_crop(image: tf.Tensor, *, resize: int = RESIZE_SIZE,
                                   crop: int = IMAGE_SIZE) -> tf.Tensor:
    """[H, W, 3] -> float32 [crop, crop, 3]: shorter side to ``resize``
    (longer side int(resize·long/short), as torchvision Resize), then the
    central crop (offsets rounded half to even, as torchvision CenterCrop)."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.minimum(height, width)
    resize_f = tf.constant(resize, tf.float64)
    new_height = tf.cast(tf.where(height <= width, resize_f, tf.floor(resize_f * height / short)), tf.int32)
    new_width = tf.cast(tf.where(width <= height, resize_f, tf.floor(resize_f * width / short)), tf.int32)
    image = tf.image.resize(image, tf.stack([new_height, new_width]), method="bilinear", antialias=True)
    top = tf.cast(tf.round(tf.cast(new_height - crop, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_width - crop, tf.float32) / 2.0), tf.int32)
    return tf.ensure_shape(image[top:top + crop, left:left + crop], [crop, crop, 3])


def eval_preprocess(jpeg: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Encoded JPEG -> float32 [224, 224, 3]: resize 256, centre crop 224, normalized."""
    del seed
    return normalize(resize_shorter_and_centre_crop(tf.io.decode_jpeg(jpeg, channels=3)))


def streaming_source(builder, split: str, shard: pipeline.Shard, *, shuffle: bool, seed: int) -> pipeline.EpochSource:
    """Epoch source reading this process's even split of the TFRecords, JPEGs still encoded; train order
    keyed by (seed, epoch). Example i of process p has the global position i·count + p."""
    files = tfds.even_splits(split, n=shard.count, drop_remainder=shard.train)[shard.index]

    def source(epoch: int) -> tf.data.Dataset:
        file_seed, buffer_seed = (int(s) for s in np.random.SeedSequence([seed, epoch]).generate_state(2))
        options = tf.data.Options()
        options.deterministic = True
        dataset = builder.as_dataset(split=files, shuffle_files=shuffle, as_supervised=True,
                                     read_config=tfds.ReadConfig(shuffle_seed=file_seed, options=options),
                                     decoders={"image": tfds.decode.SkipDecoding()})
        if shuffle:
            dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=buffer_seed)
        return dataset.enumerate().map(lambda i, example: (i * shard.count + shard.index, *example))

    return source


DATASET = pipeline.Dataset(name=TFDS_NAME, tfds_name=TFDS_NAME, splits=("train", "validation"),
                           input_shape=INPUT_SHAPE, train_preprocess=train_preprocess,
                           eval_preprocess=eval_preprocess, source=streaming_source)
