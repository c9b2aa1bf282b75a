"""ImageNet preprocessing on synthetic JPEGs, the pipeline under
tfds.testing.mock_data, and the missing-data errors (no real ImageNet here)."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import conftest
import ratebp_jax.data as data
from ratebp_jax.data import imagenet


def _seed(i: int) -> tf.Tensor:
    return tf.constant([i, 11], tf.int64)


@pytest.mark.parametrize("height,width", [(375, 500), (500, 333), (64, 64)])
def test_random_resized_crop_window_respects_area_and_aspect_ranges(height, width):
    positions = set()
    for i in range(40):
        top, left, crop_h, crop_w = imagenet.random_resized_crop_window(height, width, _seed(i)).numpy()
        assert 0 <= top <= height - crop_h and 0 <= left <= width - crop_w
        # area and ratio hold up to the rounding of each side to whole pixels
        area = crop_h * crop_w / (height * width)
        assert 0.08 * (1 - 2 / min(crop_h, crop_w)) <= area <= 1.0
        ratio = crop_w / crop_h
        slack = 1 / crop_h + 1 / crop_w
        assert 3 / 4 * (1 - slack) <= ratio <= 4 / 3 * (1 + slack)
        positions.add((top, left, crop_h, crop_w))
    assert len(positions) > 30


def test_random_resized_crop_window_falls_back_to_a_central_crop():
    # 10 × 1000: no crop with aspect ratio <= 4/3 and area >= 8% fits, so the
    # fallback takes the full height and width round(10 · 4/3) = 13, centred.
    window = imagenet.random_resized_crop_window(10, 1000, _seed(0)).numpy()
    np.testing.assert_array_equal(window, [0, (1000 - 13) // 2, 10, 13])


def test_resize_shorter_and_centre_crop_takes_the_centre():
    image = np.random.default_rng(0).integers(0, 256, size=(256, 300, 3)).astype(np.uint8)
    out = imagenet.resize_shorter_and_centre_crop(tf.constant(image)).numpy()
    # shorter side already 256: no resize; crop offsets (256-224)/2 = 16, (300-224)/2 = 38
    np.testing.assert_allclose(out, image[16:240, 38:262].astype(np.float32), atol=1e-3)


def test_resize_shorter_and_centre_crop_scales_the_shorter_side_to_256():
    # A 128 × 200 left-right ramp becomes 256 × 400; the centre crop then keeps
    # columns 88..311 of the resized image, i.e. original columns ~44..156.
    ramp = np.broadcast_to(np.arange(200, dtype=np.float32)[None, :, None], (128, 200, 3))
    out = imagenet.resize_shorter_and_centre_crop(tf.constant(ramp)).numpy()
    assert out.shape == (224, 224, 3)
    assert out[:, 0].mean() == pytest.approx((88 + 0.5) / 2 - 0.5, abs=0.1)
    assert out[:, -1].mean() == pytest.approx((311 + 0.5) / 2 - 0.5, abs=0.1)


def _jpeg(height: int, width: int, colour) -> tf.Tensor:
    image = tf.broadcast_to(tf.constant(colour, tf.uint8), [height, width, 3])
    return tf.io.encode_jpeg(image, quality=100)


def test_preprocessing_of_a_flat_jpeg_gives_its_normalized_colour():
    colour = (200, 100, 50)
    expected = (np.array(colour) / 255.0 - np.array(imagenet.MEAN)) / np.array(imagenet.STD)
    jpeg = _jpeg(300, 420, colour)
    evaluated = imagenet.eval_preprocess(jpeg).numpy()
    trained = imagenet.train_preprocess(jpeg, _seed(3)).numpy()
    for out in (evaluated, trained):
        assert out.shape == (224, 224, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out.mean((0, 1)), expected, atol=0.03)
    np.testing.assert_array_equal(trained, imagenet.train_preprocess(jpeg, _seed(3)).numpy())


def test_pipeline_runs_under_mock_data(tmp_path):
    with conftest.prepared_mock_data(tmp_path, "imagenet2012", num_examples=5):
        train = data.make_split("imagenet2012", train=True, batch_size=2, process_index=0, process_count=1)
        evaluation = data.make_split("imagenet2012", train=False, batch_size=2, process_index=0, process_count=1)
        train_batches = list(train.epoch(0))
        eval_batches = list(evaluation.epoch(0))
    assert train.num_classes == 1000 and train.input_shape == (224, 224, 3)
    assert len(train_batches) == train.steps_per_epoch == 2
    assert len(eval_batches) == evaluation.steps_per_epoch == math.ceil(5 / 2)
    assert eval_batches[-1]["mask"].tolist() == [1.0, 0.0]
    for batch in train_batches + eval_batches:
        assert batch["image"].shape == (2, 224, 224, 3) and np.all(np.isfinite(batch["image"]))


def test_unprepared_imagenet_names_the_directory_and_the_prepare_command(tmp_path):
    with pytest.raises(data.DataNotFoundError) as caught:
        data.make_split("imagenet2012", train=True, batch_size=8, data_dir=str(tmp_path),
                        process_index=0, process_count=1)
    assert str(caught.value) == (
        f"dataset 'imagenet2012' is not prepared in {tmp_path}; prepare it once with: "
        f"python -m experiments.prepare --dataset imagenet2012 --data_dir {tmp_path}")


def test_prepare_without_the_tar_files_says_where_they_go(tmp_path):
    with pytest.raises(data.DataNotFoundError) as caught:
        data.prepare("imagenet2012", data_dir=str(tmp_path))
    message = str(caught.value)
    assert "ILSVRC2012_img_train.tar" in message and str(tmp_path / "downloads" / "manual") in message
    assert not (tmp_path / "imagenet2012").exists()  # nothing was built
