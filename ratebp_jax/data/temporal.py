"""The temporal digits tasks of SPEC §8: the embedded digits, presented in time.

Both read the "digits" dataset's TFDS build ("sklearn_digits": the same
examples, labels, splits and order; no download) and differ from it only in
how one example, uint8 [8, 8, 1] with values 0..16, becomes an input sequence
[T, H, W, C] with T = NUM_STEPS = 8 (fixed by the data, so a config's
``timesteps`` must be 8):

- "digits_rows": row by row. Step t gives row t only: float32 [8, 1, 8, 1],
  sequence[t, 0, :, 0] = row t of the image, normalized as "digits" does
  ((x / 16 - DIGITS_MEAN) / DIGITS_STD).
- "digits_latency": time-to-first-spike coding. Pixel v = x / 16 ∈ [0, 1]
  fires exactly once, at step t = round((1 − v)(T − 1)): bright pixels early,
  a blank pixel at the last step. float32 [8, 8, 8, 1] of 0/1, one 1 per
  pixel, so every input's rate is 1/T and the time-mean input is the same
  for every example: the information is in spike timing only.
  Rounding: (1 − v)(T − 1) = (16 − x)·7/16 is a half-integer only at x = 8
  (3.5), where round-half-up and NumPy's round-half-to-even both give 4, so
  the two conventions agree on every pixel; we compute round-half-up exactly
  in integers, t = ((16 − x)·7 + 8) // 16.

No augmentation: training batches are preprocessed as evaluation batches
(``augment`` has no effect), because the digits' random shift moves rows in
time (rows) and would only blur where the spikes are (latency).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from ratebp_jax.data import digits

NUM_STEPS = 8  # T: one step per image row; the latency code's T of SPEC §8
ROWS_SHAPE = (NUM_STEPS, 1, 8, 1)  # [T, H, W, C]: step t is row t (1 x 8)
LATENCY_SHAPE = (NUM_STEPS, 8, 8, 1)  # [T, H, W, C]: space kept, so conv models work too
_MAX = int(digits.MAX_VALUE)  # digits' pixels are integers 0..16


def rows(image: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """uint8 [8, 8, 1] -> float32 [8, 1, 8, 1]: step t is row t, normalized as digits; ``seed`` unused."""
    del seed
    return tf.reshape(digits.normalize(image), ROWS_SHAPE)


def latency_steps(image: tf.Tensor) -> tf.Tensor:
    """uint8 [8, 8, 1] values 0..16 -> int32 [8, 8, 1]: each pixel's firing step round((1 − x/16)·7).

    Exact integer arithmetic, rounding half up (the only tie, x = 8, gives 4
    under either convention; see the module docstring).
    """
    x = tf.cast(image, tf.int32)
    return ((_MAX - x) * (NUM_STEPS - 1) + _MAX // 2) // _MAX


def latency(image: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
    """uint8 [8, 8, 1] -> float32 [8, 8, 8, 1]: 1 at [latency_steps(image), y, x, 0], else 0; ``seed`` unused."""
    del seed
    return tf.one_hot(latency_steps(image), NUM_STEPS, axis=0, dtype=tf.float32)


# The digits declaration with only the name, the shape and the preprocessing changed.
ROWS = dataclasses.replace(digits.DATASET, name="digits_rows", input_shape=ROWS_SHAPE,
                           train_preprocess=rows, eval_preprocess=rows)
LATENCY = dataclasses.replace(digits.DATASET, name="digits_latency", input_shape=LATENCY_SHAPE,
                              train_preprocess=latency, eval_preprocess=latency)
DATASETS = (ROWS, LATENCY)
