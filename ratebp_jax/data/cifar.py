"""CIFAR-10 and CIFAR-100 (TFDS "cifar10", "cifar100"), held in memory.

Train (SPEC §6, order of the reference release's transform list):
  uint8 [32, 32, 3] -> random crop 32 with 4-pixel zero padding
  -> horizontal flip (p = 1/2) -> AutoAugment CIFAR-10 policy (uint8)
  -> / 255 -> Cutout, one 16×16 hole -> per-channel normalization.
The reference applies Cutout to the [0, 1] tensor *before* Normalize
(``ToTensor(), Cutout(1, 16), Normalize(...)``), so the hole holds black
pixels, i.e. -mean/std after normalization; we keep that order.
Eval: / 255 -> normalization. Output float32 [32, 32, 3].
TFDS downloads both (``python -m experiments.prepare --dataset cifar10``).
"""

from __future__ import annotations

import functools

import tensorflow as tf

from ratebp_jax.data import pipeline
from ratebp_jax.data.augment import auto_augment_cifar10, cutout, pad_and_random_crop, random_flip_left_right

INPUT_SHAPE = (32, 32, 3)
CROP_PADDING = 4
CUTOUT_SIZE = 16
# Per-channel (R, G, B) mean and std of [0, 1] pixels, SPEC §6 (reference values).
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
NAMES = tuple(NORMALIZATION)


def normalize(image01: tf.Tensor, name: str) -> tf.Tensor:
    """(x - mean) / std per channel: float32 [H, W, 3] in [0, 1] -> float32 [H, W, 3]."""
    mean, std = NORMALIZATION[name]
    return (image01 - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def train_preprocess(image: tf.Tensor, seed: tf.Tensor, *, name: str) -> tf.Tensor:
    """uint8 [32, 32, 3] -> float32 [32, 32, 3], augmented and normalized."""
    crop_seed, flip_seed, policy_seed, cutout_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    image = pad_and_random_crop(image, crop_seed, padding=CROP_PADDING)
    image = random_flip_left_right(image, flip_seed)
    image = auto_augment_cifar10(image, policy_seed)
    image = cutout(tf.cast(image, tf.float32) / 255.0, cutout_seed, size=CUTOUT_SIZE)
    return normalize(image, name)


def eval_preprocess(image: tf.Tensor, seed: tf.Tensor | None = None, *, name: str) -> tf.Tensor:
    """uint8 [32, 32, 3] -> float32 [32, 32, 3] normalized; ``seed`` unused."""
    del seed
    return normalize(tf.cast(image, tf.float32) / 255.0, name)


DATASETS = tuple(
    pipeline.Dataset(name=name, tfds_name=name, splits=("train", "test"), input_shape=INPUT_SHAPE,
                     train_preprocess=functools.partial(train_preprocess, name=name),
                     eval_preprocess=functools.partial(eval_preprocess, name=name))
    for name in NAMES)
