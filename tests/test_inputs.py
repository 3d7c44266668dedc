"""Inputs of a recipe: `--scaler=normalize` with the training split's
statistics (torchvision's Normalize), and `--augment`'s flips and crops,
keyed by (seed, epoch, batch), each against what it must compute."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import augment
import dataloader
import datasets
import hparams


def fake_arrays(monkeypatch, x_train, x_test):
    raw = datasets.Arrays(x_train, np.arange(len(x_train)) % 2, x_test,
                          np.arange(len(x_test)) % 2, 255.0, 2)
    monkeypatch.setitem(datasets.SPECS, "digits", dataclasses.replace(
        datasets.SPECS["digits"], load=lambda *a: raw))
    datasets._cached_arrays.cache_clear()


def test_normalize_uses_the_training_split_statistics_alone(monkeypatch):
    rng = np.random.default_rng(0)
    x_train = rng.normal([10, 50, 200], [2, 5, 20], (200, 4, 4, 3))
    x_train = x_train.astype("f4")
    x_test = x_train[:50] + 1000.0  # would move any statistic it entered
    fake_arrays(monkeypatch, x_train, x_test)
    hp = hparams.make(dataset="digits", scaler="normalize", batch_size=500,
                      objective="val_loss", validation_frac=0.25)
    data = dataloader.load(hp)
    datasets._cached_arrays.cache_clear()
    data.set_epoch(0)
    train_x = np.concatenate([b[0] for b in data.train])
    test_x = np.concatenate([b[0] for b in data.test])
    val_x = np.concatenate([b[0] for b in data.validation])
    np.testing.assert_allclose(train_x.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(train_x.std((0, 1, 2)), 1, rtol=1e-4)
    # The training split (validation held out) gives mean and std...
    kept, held_out = dataloader.validation_split(np.arange(200) % 2, 0.25,
                                                 seed=0)
    split = x_train[kept].astype(np.float64)
    mean, std = split.mean((0, 1, 2)), split.std((0, 1, 2))
    # ...with which test and validation images are scaled.
    np.testing.assert_allclose(test_x, (x_test - mean) / std, rtol=1e-4)
    np.testing.assert_allclose(val_x, (x_train[held_out] - mean) / std,
                               rtol=1e-4, atol=1e-5)


def test_normalize_is_torchvision_normalize_with_given_statistics():
    x = np.array([[[[0.0, 255.0]]], [[[255.0, 0.0]]]])
    mean, std = dataloader.channel_statistics(x)
    np.testing.assert_allclose(mean, [127.5, 127.5])
    np.testing.assert_allclose(std, [127.5, 127.5])
    np.testing.assert_allclose(dataloader.scale(x, "normalize", 255.0,
                                                (mean, std))[:, 0, 0, 0],
                               [-1.0, 1.0])


def test_flip_mirrors_some_images_and_keeps_the_others():
    images = tf.reshape(tf.range(2 * 3 * 4 * 5, dtype=tf.float32),
                        (2 * 3, 4, 5, 1)) + 0.0
    key = augment.batch_key(0, 0, 0)
    flipped = augment.random_flip(images, key).numpy()
    mirrored = images.numpy()[:, :, ::-1]
    same = [np.array_equal(f, i) for f, i in zip(flipped, images.numpy())]
    flips = [np.array_equal(f, m) for f, m in zip(flipped, mirrored)]
    assert all(s != f for s, f in zip(same, flips))  # one or the other
    assert any(same) and any(flips)


def test_crop_is_a_window_of_the_padded_image():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(16, 6, 7, 2)).astype("f4")
    pad_value = np.array([-1.0, 3.0], "f4")
    cropped = augment.random_crop(tf.constant(images),
                                  augment.batch_key(0, 0, 0),
                                  pad_value=pad_value).numpy()
    padded = np.pad(images - pad_value, ((0, 0), (4, 4), (4, 4), (0, 0)))
    padded += pad_value
    offsets = set()
    for image, window in zip(padded, cropped):
        found = [(r, c) for r in range(9) for c in range(9)
                 if np.array_equal(image[r:r + 6, c:c + 7], window)]
        assert found, "not a window of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 4  # each image its own offset


def augmented_epochs(hp, epochs):
    data = dataloader.load(hp)
    passes = []
    for epoch in epochs:
        data.set_epoch(epoch)
        passes.append([(x.numpy(), y.numpy()) for x, y in data.train])
    return passes


def flip_masks(hp, epochs):
    """Per epoch, which images of the pass `--augment=flip` mirrored
    (compared with the same pass unaugmented)."""
    masks = []
    for augmented, plain in zip(augmented_epochs(hp, epochs),
                                augmented_epochs(hp.replace(augment="none"),
                                                 epochs)):
        mask = []
        for (x, y), (xp, yp) in zip(augmented, plain):
            np.testing.assert_array_equal(y, yp)  # labels follow images
            for image, original in zip(x, xp):
                mirrored = np.array_equal(image, original[:, ::-1])
                assert mirrored or np.array_equal(image, original)
                mask.append(mirrored and not np.array_equal(original,
                                                            original[:, ::-1]))
        masks.append(np.array(mask))
    return masks


def test_augmentation_is_keyed_by_seed_and_epoch_and_keeps_labels():
    hp = hparams.make(dataset="digits", augment="flip", batch_size=64)
    first, again, second = flip_masks(hp, [0, 0, 1])
    np.testing.assert_array_equal(first, again)  # same (seed, epoch)
    assert 0.4 < first.mean() < 0.6
    assert (first != second).mean() > 0.3  # another epoch, other draws
    other_seed, = flip_masks(hp.replace(seed=1), [0])
    assert (first != other_seed).mean() > 0.3


def test_crop_flip_keeps_shapes_and_changes_images():
    hp = hparams.make(dataset="digits", augment="crop_flip", batch_size=64)
    (augmented,), (plain,) = (augmented_epochs(hp, [0]),
                              augmented_epochs(hp.replace(augment="none"),
                                               [0]))
    for (x, y), (xp, yp) in zip(augmented, plain):
        assert x.shape == xp.shape
        np.testing.assert_array_equal(y, yp)
    assert not np.array_equal(augmented[0][0], plain[0][0])


def test_reconstruction_targets_are_the_augmented_inputs():
    hp = hparams.make(dataset="digits", augment="flip", batch_size=64,
                      problem_type="reconstruction", algorithm="dfa")
    (x, target), *_ = augmented_epochs(hp, [0])[0]
    np.testing.assert_array_equal(x, target)


def test_augmentation_refuses_data_that_are_not_images(monkeypatch):
    fake_arrays(monkeypatch, np.zeros((20, 7), "f4"), np.zeros((5, 7), "f4"))
    with pytest.raises(hparams.UsageError, match="needs images"):
        dataloader.load(hparams.make(dataset="digits", augment="flip"))
    datasets._cached_arrays.cache_clear()
