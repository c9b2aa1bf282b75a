"""The embedded default dataset: scikit-learn's 8×8 handwritten digits.

``SklearnDigits`` is a TFDS builder (registered as "sklearn_digits" when this
module is imported) over ``sklearn.datasets.load_digits()``: 1,797 greyscale
images with values 0..16, stored as uint8 [8, 8, 1], labels 0..9. No download:
the data ship inside scikit-learn. Splits: a fixed stratified 80/20 split
(``train_test_split(test_size=0.2, stratify=labels, random_state=0)``), giving
train 1,437 and test 360 examples.

Pipeline: image / 16 -> [0, 1], then (x - DIGITS_MEAN) / DIGITS_STD; training
with augmentation adds a random translation by up to one pixel (zero-pad 1,
random 8×8 crop) before scaling. No flips: digits are not mirror-symmetric.
Nothing to download, so the dataset builds itself into the data_dir on first
use (about a second; ``embedded`` in its declaration).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from ratebp_jax.data import pipeline
from ratebp_jax.data.augment import pad_and_random_crop

TFDS_NAME = "sklearn_digits"
INPUT_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
SPLIT_SEED = 0  # random_state of the stratified train/test split
TEST_FRACTION = 0.2
MAX_VALUE = 16.0  # load_digits pixel values are integers 0..16
# Mean and std (population) of the training split's pixels after / 16,
# computed once with
#   x = SklearnDigits train images as float64 / 16; x.mean(), x.std()
DIGITS_MEAN = 0.30538339422407795
DIGITS_STD = 0.3761191680900195


def stratified_split() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{"train"/"test": (images uint8 [N, 8, 8, 1], labels int64 [N], source indices [N])}."""
    from sklearn.datasets import load_digits  # heavy import, only when building
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    indices = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        indices, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    return {name: (images[idx], labels[idx], idx) for name, idx in (("train", train_idx), ("test", test_idx))}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits (UCI optical recognition of handwritten digits, test part)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split of load_digits(), random_state=0."}
    # TFDS 4.9.10's default code_path needs `importlib_resources` (declared by
    # TFDS only for Python < 3.9); say where this builder lives instead.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="8x8 greyscale digits 0-9 with pixel values 0..16 (sklearn.datasets.load_digits).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=INPUT_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {name: self._generate_examples(*arrays) for name, arrays in stratified_split().items()}

    def _generate_examples(self, images, labels, indices):
        for image, label, index in zip(images, labels, indices):
            yield int(index), {"image": image, "label": int(label)}


def normalize(image: tf.Tensor) -> tf.Tensor:
    """uint8 [8, 8, 1] values 0..16 -> float32 (x / 16 - DIGITS_MEAN) / DIGITS_STD."""
    return (tf.cast(image, tf.float32) / MAX_VALUE - DIGITS_MEAN) / DIGITS_STD


def train_preprocess(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [8, 8, 1] -> float32 [8, 8, 1]: shift by up to 1 px, then normalize."""
    return normalize(pad_and_random_crop(image, seed, padding=1))


def eval_preprocess(image: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """uint8 [8, 8, 1] -> float32 [8, 8, 1], normalized; ``seed`` unused."""
    del seed
    return normalize(image)


DATASET = pipeline.Dataset(name="digits", tfds_name=TFDS_NAME, splits=("train", "test"), input_shape=INPUT_SHAPE,
                           train_preprocess=train_preprocess, eval_preprocess=eval_preprocess, embedded=True)
