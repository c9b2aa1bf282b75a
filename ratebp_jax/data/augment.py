"""Image augmentations as small pure TensorFlow functions with stateless seeds.

Every random op takes ``image`` [H, W, C] and ``seed``, an int32/int64 tensor
of shape [2] (``tf.random.stateless_*`` convention): the same (image, seed)
always gives the same output, so tf.data pipelines stay reproducible across
restarts. Deterministic ops take a magnitude instead of a seed.

Two families:
- geometric / masking ops for the training recipes (SPEC §6):
  ``pad_and_random_crop``, ``random_flip_left_right``, ``cutout``;
  any dtype, output has the input's shape and dtype.
- AutoAugment ops (Cubuk et al. 2019) on uint8 images [H, W, 3] as PIL does
  them (``ImageOps`` / ``ImageEnhance`` / ``Image.transform``), and
  ``auto_augment_cifar10`` applying the 25-sub-policy CIFAR-10 policy.
  Details follow the reference release's PIL implementation (CIFAR10Policy):
  grey fill 128 outside geometric transforms, rotation counter-clockwise only,
  Solarize thresholds ``linspace(256, 0, 10)``, a random sign on shear,
  translate and the enhance factors. One deliberate difference: PIL shears
  with bicubic interpolation, TF's transform op offers only bilinear.
"""

import functools
import math

import numpy as np
import tensorflow as tf

AUTO_AUGMENT_FILL = 128  # reference: CIFAR10Policy(fillcolor=(128, 128, 128))


# --- Training-recipe ops -------------------------------------------------------


def pad_and_random_crop(image: tf.Tensor, seed: tf.Tensor, padding: int) -> tf.Tensor:
    """Zero-pads ``padding`` pixels on every side, then crops back to [H, W, C].

    The crop offset is uniform over all 2·padding+1 positions per axis, i.e. a
    random translation by up to ``padding`` pixels (torchvision RandomCrop
    with ``padding``). Static H, W required.
    """
    height, width = image.shape[0], image.shape[1]
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    offset = tf.random.stateless_uniform([2], seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
    cropped = tf.slice(padded, [offset[0], offset[1], 0], [height, width, -1])
    return tf.ensure_shape(cropped, image.shape)


def random_flip_left_right(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors [H, W, C] along the width axis with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def cutout(image: tf.Tensor, seed: tf.Tensor, size: int = 16) -> tf.Tensor:
    """Zeroes one ``size``×``size`` square of [H, W, C] (DeVries & Taylor 2017).

    The centre is uniform over all pixels; rows [cy - size/2, cy + size/2) and
    the matching columns are zeroed, clipped at the borders (so near an edge
    the hole is smaller), as the reference's ``Cutout(n_holes=1, length=16)``.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    flat_centre = tf.random.stateless_uniform([], seed, minval=0, maxval=height * width, dtype=tf.int32)
    centre_y, centre_x = flat_centre // width, flat_centre % width
    half = size // 2
    rows = tf.range(height)
    cols = tf.range(width)
    in_rows = (rows >= centre_y - half) & (rows < centre_y + half)
    in_cols = (cols >= centre_x - half) & (cols < centre_x + half)
    hole = in_rows[:, None] & in_cols[None, :]
    return tf.where(hole[:, :, None], tf.zeros_like(image), image)


# --- AutoAugment ops: uint8 [H, W, 3] in, uint8 [H, W, 3] out ------------------


def _truncate_to_uint8(values: tf.Tensor) -> tf.Tensor:
    """Clips to [0, 255] and truncates, as PIL's blend and LUTs store floats."""
    return tf.cast(tf.floor(tf.clip_by_value(values, 0.0, 255.0)), tf.uint8)


def _apply_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
    """Per-channel look-up: image uint8 [H, W, C], lut int [C, 256]."""
    channels_first = tf.transpose(tf.cast(image, tf.int32), [2, 0, 1])  # [C, H, W]
    mapped = tf.gather(lut, channels_first, batch_dims=1)
    return tf.cast(tf.transpose(mapped, [1, 2, 0]), tf.uint8)


def _channel_histograms(image: tf.Tensor) -> tf.Tensor:
    """Pixel counts per value: uint8 [H, W, C] -> int32 [C, 256]."""
    values = tf.reshape(tf.transpose(tf.cast(image, tf.int32), [2, 0, 1]), [tf.shape(image)[2], -1])
    return tf.math.bincount(values, minlength=256, maxlength=256, axis=-1)


def invert(image: tf.Tensor) -> tf.Tensor:
    """255 - x (PIL ImageOps.invert)."""
    return 255 - image


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
    """Inverts pixels >= threshold, keeps pixels < threshold (ImageOps.solarize)."""
    return tf.where(tf.cast(image, tf.float32) < threshold, image, 255 - image)


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """Keeps the ``bits`` most significant bits of each value (ImageOps.posterize)."""
    shift = tf.cast(8 - bits, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel's [min, max] to [0, 255] (ImageOps.autocontrast).

    A constant channel is left unchanged. Same float64 arithmetic as PIL's LUT
    (``int(v * scale - lo * scale)``).
    """
    values = tf.cast(image, tf.float64)
    low = tf.reduce_min(values, axis=[0, 1])
    high = tf.reduce_max(values, axis=[0, 1])
    scale = 255.0 / tf.maximum(high - low, 1.0)
    stretched = _truncate_to_uint8(values * scale + (-low * scale))
    return tf.where(high > low, stretched, image)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation per channel with PIL's LUT (ImageOps.equalize).

    step = (pixels - count of the highest occupied value) // 255;
    lut[v] = (step // 2 + pixels below v) // step; identity where step == 0.
    """
    histograms = _channel_histograms(image)  # [C, 256]
    occupied = histograms > 0
    highest = 255 - tf.argmax(tf.reverse(tf.cast(occupied, tf.int32), [1]), axis=1, output_type=tf.int32)
    count_at_highest = tf.gather(histograms, highest, batch_dims=1)
    step = (tf.reduce_sum(histograms, axis=1) - count_at_highest) // 255  # [C]
    below = tf.cumsum(histograms, axis=1, exclusive=True)
    safe_step = tf.maximum(step, 1)[:, None]
    lut = tf.minimum((safe_step // 2 + below) // safe_step, 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])
    return _apply_lut(image, lut)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
    """PIL Image.blend(degenerate, image, factor): degenerate + factor·(image − degenerate)."""
    degenerate = tf.cast(degenerate, tf.float32)
    return _truncate_to_uint8(degenerate + factor * (tf.cast(image, tf.float32) - degenerate))


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, fixed point): int32 [H, W, 1]."""
    rgb = tf.cast(image, tf.int32)
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return tf.bitwise.right_shift(luma, 16)[..., None]


def color(image: tf.Tensor, factor) -> tf.Tensor:
    """Saturation: blend with the grey version (ImageEnhance.Color)."""
    return _blend(tf.broadcast_to(_grayscale(image), tf.shape(image)), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
    """Blend with a flat image at the rounded mean grey level (ImageEnhance.Contrast)."""
    mean = tf.floor(tf.reduce_mean(tf.cast(_grayscale(image), tf.float32)) + 0.5)
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
    """Blend with black (ImageEnhance.Brightness)."""
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
    """Blend with PIL's SMOOTH filter (3×3, centre 5, others 1, /13; border kept)."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    channels = image.shape[-1]
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    values = tf.cast(image, tf.float32)
    smoothed = tf.nn.depthwise_conv2d(values[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smoothed = tf.round(smoothed)
    inner = tf.pad(tf.ones_like(smoothed, tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(inner, tf.pad(smoothed, [[1, 1], [1, 1], [0, 0]]), values)
    return _blend(degenerate, image, factor)


def _pil_affine(image: tf.Tensor, coefficients, *, fill: int, interpolation: str) -> tf.Tensor:
    """PIL ``Image.transform(size, AFFINE, (a, b, c, d, e, f))`` for [H, W, C].

    Output pixel (x, y) samples input (a·x + b·y + c, d·x + e·y + f), PIL
    measuring from pixel corners and TF from pixel centres; outside -> fill.
    """
    a, b, c, d, e, f = coefficients
    transform = tf.stack([
        a, b, 0.5 * a + 0.5 * b + c - 0.5,
        d, e, 0.5 * d + 0.5 * e + f - 0.5,
        0.0, 0.0,
    ])
    transform = tf.cast(tf.reshape(transform, [1, 8]), tf.float32)
    output = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform,
        output_shape=tf.shape(image)[:2], fill_value=float(fill),
        interpolation=interpolation, fill_mode="CONSTANT")[0]
    return tf.cast(tf.clip_by_value(tf.round(output), 0.0, 255.0), tf.uint8)


def shear_x(image: tf.Tensor, level, fill: int = AUTO_AUGMENT_FILL) -> tf.Tensor:
    """Shear along x: input x = x + level·y (PIL AFFINE (1, level, 0, 0, 1, 0)), bilinear."""
    return _pil_affine(image, (1.0, level, 0.0, 0.0, 1.0, 0.0), fill=fill, interpolation="BILINEAR")


def shear_y(image: tf.Tensor, level, fill: int = AUTO_AUGMENT_FILL) -> tf.Tensor:
    """Shear along y: input y = level·x + y (PIL AFFINE (1, 0, 0, level, 1, 0)), bilinear."""
    return _pil_affine(image, (1.0, 0.0, 0.0, level, 1.0, 0.0), fill=fill, interpolation="BILINEAR")


def translate_x(image: tf.Tensor, pixels, fill: int = AUTO_AUGMENT_FILL) -> tf.Tensor:
    """Content moves left by ``pixels`` (PIL AFFINE (1, 0, pixels, 0, 1, 0)), nearest."""
    return _pil_affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill=fill, interpolation="NEAREST")


def translate_y(image: tf.Tensor, pixels, fill: int = AUTO_AUGMENT_FILL) -> tf.Tensor:
    """Content moves up by ``pixels`` (PIL AFFINE (1, 0, 0, 0, 1, pixels)), nearest."""
    return _pil_affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill=fill, interpolation="NEAREST")


def rotate(image: tf.Tensor, degrees, fill: int = AUTO_AUGMENT_FILL) -> tf.Tensor:
    """Counter-clockwise rotation about the centre, nearest (PIL Image.rotate)."""
    height, width = float(image.shape[0]), float(image.shape[1])
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    centre_x, centre_y = width / 2.0, height / 2.0
    offset_x = centre_x - cos * centre_x + sin * centre_y
    offset_y = centre_y - sin * centre_x - cos * centre_y
    return _pil_affine(image, (cos, -sin, offset_x, sin, cos, offset_y), fill=fill, interpolation="NEAREST")


# --- The CIFAR-10 policy ---------------------------------------------------------

_LINEAR_0_09 = np.linspace(0.0, 0.9, 10)
_UNUSED = np.zeros(10)
# name -> (operation(image, level), magnitude for indices 0..9, signed?); the
# magnitudes are the reference SubPolicy ranges, translate as a fraction of
# the image size, enhance operations use factor 1 + level.
_OPERATIONS = {
    "shear_x": (shear_x, np.linspace(0.0, 0.3, 10), True),
    "shear_y": (shear_y, np.linspace(0.0, 0.3, 10), True),
    "translate_x": (lambda im, v: translate_x(im, v * im.shape[1]), np.linspace(0.0, 150 / 331, 10), True),
    "translate_y": (lambda im, v: translate_y(im, v * im.shape[0]), np.linspace(0.0, 150 / 331, 10), True),
    "rotate": (rotate, np.linspace(0.0, 30.0, 10), False),  # reference: counter-clockwise only
    "color": (lambda im, v: color(im, 1.0 + v), _LINEAR_0_09, True),
    "contrast": (lambda im, v: contrast(im, 1.0 + v), _LINEAR_0_09, True),
    "sharpness": (lambda im, v: sharpness(im, 1.0 + v), _LINEAR_0_09, True),
    "brightness": (lambda im, v: brightness(im, 1.0 + v), _LINEAR_0_09, True),
    "posterize": (lambda im, v: posterize(im, tf.cast(v, tf.int32)), np.round(np.linspace(8, 4, 10)), False),
    "solarize": (solarize, np.linspace(256.0, 0.0, 10), False),
    "auto_contrast": (lambda im, v: auto_contrast(im), _UNUSED, False),
    "equalize": (lambda im, v: equalize(im), _UNUSED, False),
    "invert": (lambda im, v: invert(im), _UNUSED, False),
}
_OPERATION_NAMES = tuple(_OPERATIONS)  # operation id = position in this tuple

# (operation, probability, magnitude index) pairs; Cubuk et al. 2019, table in
# torchvision's AutoAugmentPolicy.CIFAR10 and in the reference CIFAR10Policy.
CIFAR10_POLICY = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("auto_contrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, 7), ("auto_contrast", 0.4, 8)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("auto_contrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("auto_contrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("auto_contrast", 0.9, 3)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("auto_contrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate_y", 0.7, 9), ("auto_contrast", 0.9, 1)),
)


def policy_magnitude(name: str, index: int) -> float:
    """The policy magnitude of operation ``name`` at index 0..9 (unsigned)."""
    return float(_OPERATIONS[name][1][index])


def apply_operation(image: tf.Tensor, name: str, magnitude, sign=1.0) -> tf.Tensor:
    """One AutoAugment operation on uint8 [H, W, 3] (static H, W) -> uint8.

    ``magnitude``: ``policy_magnitude(name, index)``; ``sign`` (±1, may be a
    tensor) multiplies it for the signed operations.
    """
    operation, _, signed = _OPERATIONS[name]
    return operation(image, tf.cast(magnitude, tf.float32) * (sign if signed else 1.0))


def _policy_table(policy) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(operation ids int32 [P, 2], probabilities float32 [P, 2], magnitudes float32 [P, 2])."""
    ids = [[_OPERATION_NAMES.index(name) for name, _, _ in sub] for sub in policy]
    probabilities = [[probability for _, probability, _ in sub] for sub in policy]
    magnitudes = [[policy_magnitude(name, index) for name, _, index in sub] for sub in policy]
    return (tf.constant(ids, tf.int32), tf.constant(probabilities, tf.float32),
            tf.constant(magnitudes, tf.float32))


def _apply_operation_by_id(image: tf.Tensor, operation_id: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor):
    branches = [functools.partial(apply_operation, image, name, magnitude, sign) for name in _OPERATION_NAMES]
    return tf.ensure_shape(tf.switch_case(operation_id, branches), image.shape)


def auto_augment_cifar10(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """AutoAugment CIFAR-10 policy on uint8 [H, W, 3] (static H, W) -> uint8 [H, W, 3].

    Picks one of the 25 sub-policies uniformly, then applies each of its two
    operations with its probability and a random sign, all drawn from ``seed``.
    """
    operation_ids, probabilities, magnitudes = _policy_table(CIFAR10_POLICY)
    choice_seed, draw_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    choice = tf.random.stateless_uniform([], choice_seed, minval=0, maxval=len(CIFAR10_POLICY), dtype=tf.int32)
    draws = tf.random.stateless_uniform([2], draw_seed)
    signs = tf.where(tf.random.stateless_uniform([2], sign_seed) < 0.5, -1.0, 1.0)
    for slot in range(2):
        apply = functools.partial(_apply_operation_by_id, image, operation_ids[choice, slot],
                                  magnitudes[choice, slot], signs[slot])
        image = tf.cond(draws[slot] < probabilities[choice, slot], apply, lambda image=image: image)
    return image
