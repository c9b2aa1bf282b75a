"""ratebp_jax.data.augment: recipe ops by their defining properties, AutoAugment
ops against NumPy references and against PIL (what the reference release
runs), and the CIFAR-10 policy as a whole."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from ratebp_jax.data import augment


def _seed(i: int) -> tf.Tensor:
    return tf.constant([i, 7], tf.int64)


def _shift_with_zeros(image: np.ndarray, dy: int, dx: int, padding: int) -> np.ndarray:
    """The crop of the zero-padded image at offset (padding + dy, padding + dx)."""
    height, width = image.shape[:2]
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)])
    return padded[padding + dy:padding + dy + height, padding + dx:padding + dx + width]


def _random_uint8(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


# --- recipe ops -----------------------------------------------------------------


def test_pad_and_random_crop_is_a_zero_filled_shift_reaching_every_offset():
    image = (np.arange(64, dtype=np.uint8).reshape(8, 8, 1) + 1)  # no zeros inside
    shifts = set()
    for i in range(80):
        out = augment.pad_and_random_crop(tf.constant(image), _seed(i), padding=1).numpy()
        matches = [(dy, dx) for dy, dx in itertools.product((-1, 0, 1), repeat=2)
                   if np.array_equal(out, _shift_with_zeros(image, dy, dx, padding=1))]
        assert len(matches) == 1, f"seed {i}: not a shifted copy"
        shifts.add(matches[0])
    assert len(shifts) == 9


def test_random_flip_mirrors_or_keeps_and_is_an_involution_per_seed():
    image = tf.constant(_random_uint8((4, 6, 3)))
    flipped = 0
    for i in range(20):
        out = augment.random_flip_left_right(image, _seed(i)).numpy()
        mirrored = np.array_equal(out, image.numpy()[:, ::-1])
        assert mirrored or np.array_equal(out, image.numpy())
        flipped += mirrored
        twice = augment.random_flip_left_right(tf.constant(out), _seed(i)).numpy()
        np.testing.assert_array_equal(twice, image.numpy())
    assert 0 < flipped < 20


def test_cutout_zeroes_one_clipped_square_of_at_most_16_pixels():
    image = tf.ones([32, 32, 3], tf.float32)
    sizes = set()
    for i in range(60):
        out = augment.cutout(image, _seed(i), size=16).numpy()
        hole = out[..., 0] == 0
        assert np.array_equal(hole[..., None].repeat(3, -1), out == 0)  # all channels together
        rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert hole.sum() == height * width, "hole is not one rectangle"
        assert 8 <= height <= 16 and 8 <= width <= 16
        assert np.all(out[~hole] == 1.0)
        sizes.add((height, width))
    assert (16, 16) in sizes and len(sizes) > 1  # interior holes and border-clipped ones


# --- AutoAugment ops against NumPy references --------------------------------------


def _np_equalize(image: np.ndarray) -> np.ndarray:
    """PIL ImageOps.equalize, written out per channel."""
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        histogram = np.bincount(image[..., c].ravel(), minlength=256)
        counts = histogram[histogram > 0]
        step = (counts.sum() - counts[-1]) // 255
        if len(counts) <= 1 or step == 0:
            out[..., c] = image[..., c]
            continue
        lut, n = [], step // 2
        for value in range(256):
            lut.append(min(n // step, 255))
            n += histogram[value]
        out[..., c] = np.asarray(lut)[image[..., c]]
    return out


def test_point_ops_match_numpy_references():
    image = _random_uint8((5, 7, 3))
    image[..., 2] = 77  # a constant channel: equalize and auto_contrast keep it
    tf_image = tf.constant(image)
    np.testing.assert_array_equal(augment.invert(tf_image), 255 - image)
    for threshold in (0.0, 28.4, 113.8, 256.0):
        expected = np.where(image < threshold, image, 255 - image)
        np.testing.assert_array_equal(augment.solarize(tf_image, threshold), expected)
    for bits in (4, 5, 8):
        expected = image & np.uint8((0xFF << (8 - bits)) & 0xFF)
        np.testing.assert_array_equal(augment.posterize(tf_image, bits), expected)
    np.testing.assert_array_equal(augment.equalize(tf_image), _np_equalize(image))
    low, high = image.min((0, 1)), image.max((0, 1))
    scale = 255.0 / np.maximum(high - low, 1)
    stretched = np.floor(np.clip(image * scale - low * scale, 0, 255))
    expected = np.where(high > low, stretched, image).astype(np.uint8)
    np.testing.assert_array_equal(augment.auto_contrast(tf_image), expected)


# --- AutoAugment ops against PIL ------------------------------------------------------


def _smooth_image() -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32]
    return np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1).clip(0, 255).astype(np.uint8)


def test_ops_match_pil_exactly():
    pytest.importorskip("PIL")
    from PIL import Image, ImageEnhance, ImageOps
    image = _random_uint8((16, 16, 3), seed=3)
    smooth = _smooth_image()
    fill = (128, 128, 128)
    cases = [
        (augment.auto_contrast((image // 2 + 40)), ImageOps.autocontrast(Image.fromarray(image // 2 + 40))),
        (augment.equalize(image), ImageOps.equalize(Image.fromarray(image))),
        (augment.color(image, 1.7), ImageEnhance.Color(Image.fromarray(image)).enhance(1.7)),
        (augment.contrast(image, 0.3), ImageEnhance.Contrast(Image.fromarray(image)).enhance(0.3)),
        (augment.brightness(image, 1.6), ImageEnhance.Brightness(Image.fromarray(image)).enhance(1.6)),
        (augment.sharpness(image, 0.2), ImageEnhance.Sharpness(Image.fromarray(image)).enhance(0.2)),
        (augment.sharpness(image, 1.9), ImageEnhance.Sharpness(Image.fromarray(image)).enhance(1.9)),
        (augment.translate_x(smooth, -12.89),
         Image.fromarray(smooth).transform((32, 32), Image.AFFINE, (1, 0, -12.89, 0, 1, 0), fillcolor=fill)),
        (augment.translate_y(smooth, 14.5),
         Image.fromarray(smooth).transform((32, 32), Image.AFFINE, (1, 0, 0, 0, 1, 14.5), fillcolor=fill)),
    ]
    degrees = augment.policy_magnitude("rotate", 2)  # the policy's only rotation
    rotated = Image.fromarray(smooth).convert("RGBA").rotate(degrees)  # the reference's rotate_with_fill
    cases.append((augment.rotate(smooth, degrees), Image.composite(
        rotated, Image.new("RGBA", rotated.size, (128,) * 4), rotated).convert("RGB")))
    for number, (ours, reference) in enumerate(cases):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference), err_msg=f"case {number}")


def test_shear_matches_pil_geometry():
    """PIL shears bicubic, TF bilinear: compare with PIL's bilinear away from the fill edge."""
    pytest.importorskip("PIL")
    from PIL import Image
    smooth = _smooth_image()
    for op, coefficients in ((augment.shear_x, (1, 0.3, 0, 0, 1, 0)), (augment.shear_y, (1, 0, 0, -0.27, 1, 0))):
        level = coefficients[1] or coefficients[3]
        reference = np.asarray(Image.fromarray(smooth).transform(
            (32, 32), Image.AFFINE, coefficients, Image.BILINEAR, fillcolor=(128, 128, 128))).astype(int)
        ours = np.asarray(op(smooth, level)).astype(int)
        assert np.mean(np.abs(ours - reference) <= 1) > 0.95


# --- the policy -------------------------------------------------------------------------


def test_cifar10_policy_table():
    assert len(augment.CIFAR10_POLICY) == 25
    for sub_policy in augment.CIFAR10_POLICY:
        assert len(sub_policy) == 2
        for name, probability, index in sub_policy:
            assert 0.0 <= probability <= 1.0 and 0 <= index <= 9
            augment.policy_magnitude(name, index)  # a known operation
    assert augment.policy_magnitude("posterize", 7) == 5  # round(8 - 4·7/9)
    assert augment.policy_magnitude("solarize", 0) == 256.0  # threshold above every value


def _policy_outcomes(image: tf.Tensor) -> set:
    """Every image the policy can produce: sub-policy × applied-or-not × sign."""
    outcomes = set()
    for sub_policy in augment.CIFAR10_POLICY:
        for applied in itertools.product((False, True), repeat=2):
            for signs in itertools.product((-1.0, 1.0), repeat=2):
                out = image
                for (name, _, index), apply, sign in zip(sub_policy, applied, signs):
                    if apply:
                        out = augment.apply_operation(out, name, augment.policy_magnitude(name, index), sign)
                outcomes.add(out.numpy().tobytes())
    return outcomes


def test_auto_augment_is_deterministic_uint8_and_one_of_the_policy_outcomes():
    image = tf.constant(_random_uint8((12, 12, 3), seed=5))
    outcomes = _policy_outcomes(image)
    seen = set()
    for i in range(40):
        out = augment.auto_augment_cifar10(image, _seed(i))
        assert out.dtype == tf.uint8 and out.shape == (12, 12, 3)
        np.testing.assert_array_equal(out, augment.auto_augment_cifar10(image, _seed(i)))
        assert out.numpy().tobytes() in outcomes, f"seed {i}: not an outcome of the policy"
        seen.add(out.numpy().tobytes())
    assert len(seen) > 10
