"""Datasets: the real file formats (CIFAR written by the test, tfds' mock
data, an image folder), the shared MNIST copies, and the seeded subsets."""

import gc
import os
import pickle
import tarfile

import numpy as np
import pytest

import dataloader
import datasets
import host_tensors
import hparams
from conftest import SHARED_DATA


def settings(**kw):
    return hparams.make(**kw)


def write_cifar(folder, name, n_per_file, classes, label_key, files):
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    written = {}
    for fname in files:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, classes, n_per_file))
        with open(os.path.join(folder, fname), "wb") as f:
            pickle.dump({b"data": data, label_key.encode(): labels}, f)
        written[fname] = (data, labels)
    return written


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("packed", [False, True])
def test_cifar_reads_keras_python_format(dataset, packed, tmp_path):
    sub, tarball, train_files, test_files, key, classes = \
        datasets.CIFAR[dataset]
    written = write_cifar(str(tmp_path / sub), dataset, 20, classes, key,
                          train_files + test_files)
    if packed:
        with tarfile.open(tmp_path / tarball, "w:gz") as tar:
            tar.add(tmp_path / sub, arcname=sub)
        for f in os.listdir(tmp_path / sub):
            os.remove(tmp_path / sub / f)
        os.rmdir(tmp_path / sub)
    datasets._cached_arrays.cache_clear()
    raw = datasets.load_arrays(settings(dataset=dataset,
                                          data_dir=str(tmp_path)))
    assert raw.x_train.shape == (20 * len(train_files), 32, 32, 3)
    assert raw.num_classes == classes
    data, labels = written[test_files[0]]
    # CIFAR rows are channel-major: R plane, G plane, B plane.
    np.testing.assert_array_equal(raw.x_test[0, :, :, 1],
                                  data[0, 1024:2048].reshape(32, 32))
    np.testing.assert_array_equal(raw.y_test, labels)


def test_eurosat_through_tfds_mock(tmp_path):
    import tensorflow_datasets as tfds
    datasets._cached_arrays.cache_clear()
    with tfds.testing.mock_data(num_examples=50):
        raw = datasets.load_arrays(settings(dataset="eurosat",
                                              data_dir=str(tmp_path)))
    assert raw.x_train.shape[1:] == (64, 64, 3)
    assert len(raw.x_train) + len(raw.x_test) == 50
    assert raw.num_classes == 10
    datasets._cached_arrays.cache_clear()


def test_caltech256_image_folder_split_is_seeded_and_disjoint(tmp_path):
    from PIL import Image
    root = tmp_path / "256_ObjectCategories"
    rng = np.random.default_rng(0)
    for c, name in enumerate(["001.ak47", "002.bat", "257.clutter"]):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg")
    datasets._cached_arrays.cache_clear()
    raw = datasets.load_arrays(settings(dataset="caltech256",
                                          data_dir=str(tmp_path)))
    datasets._cached_arrays.cache_clear()
    assert raw.num_classes == 2  # clutter is not a class
    assert len(raw.x_train) + len(raw.x_test) == 20
    assert raw.x_train.shape[1:] == (64, 64, 3)
    flat = {x.tobytes() for x in raw.x_train}
    assert not flat & {x.tobytes() for x in raw.x_test}


@pytest.mark.skipif(not os.path.exists(SHARED_DATA), reason="no shared data")
@pytest.mark.parametrize("dataset", ["mnist", "fmnist"])
def test_shared_mnist_files(dataset):
    raw = datasets.load_arrays(settings(dataset=dataset,
                                          data_dir=SHARED_DATA))
    assert raw.x_train.shape == (60000, 28, 28, 1)
    assert raw.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(raw.y_test).tolist()[:1] == (
        [980] if dataset == "mnist" else [1000])


@pytest.mark.parametrize("dataset, module", [("mnist", "mnist"),
                                             ("fmnist", "fashion_mnist")])
def test_absent_files_are_left_to_keras_loader(dataset, module, monkeypatch,
                                               tmp_path):
    """No --data_dir and nothing in Keras' cache: Keras loads (downloads)."""
    import keras
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    grey = np.zeros((4, 28, 28), np.uint8)
    monkeypatch.setattr(getattr(keras.datasets, module), "load_data",
                        lambda: ((grey, np.arange(4)), (grey, np.arange(4))))
    datasets._cached_arrays.cache_clear()
    raw = datasets.load_arrays(settings(dataset=dataset))
    datasets._cached_arrays.cache_clear()
    assert raw.x_train.shape == (4, 28, 28, 1)

    def offline():
        raise OSError("no network")
    monkeypatch.setattr(getattr(keras.datasets, module), "load_data",
                        offline)
    with pytest.raises(datasets.DataError, match="download failed"):
        datasets.load_arrays(settings(dataset=dataset))
    datasets._cached_arrays.cache_clear()


def test_data_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    assert datasets.resolve_dir(settings(dataset="mnist")) == (
        str(tmp_path), True)


def test_examples_frac_is_stratified():
    y = np.repeat(np.arange(4), [100, 80, 60, 40])
    idx = dataloader.subsample(y, 0.25, "none", 1, 4, seed=0)
    assert np.bincount(y[idx]).tolist() == [25, 20, 15, 10]


@pytest.mark.parametrize("skew, expected", [
    ("long_tailed", [100, 46, 21, 10]),
    ("step", [100, 100, 10, 10])])
def test_skew_makes_classes_imbalanced(skew, expected):
    y = np.repeat(np.arange(4), 100)
    idx = dataloader.subsample(y, 1.0, skew, 10.0, 4, seed=0)
    assert np.bincount(y[idx]).tolist() == expected


def test_validation_split_is_disjoint_and_seeded():
    y = np.repeat(np.arange(3), 50)
    train, val = dataloader.validation_split(y, 0.2, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == 150
    assert np.bincount(y[val]).tolist() == [10, 10, 10]
    again, _ = dataloader.validation_split(y, 0.2, seed=0)
    np.testing.assert_array_equal(train, again)


@pytest.mark.parametrize("scaler, low, high", [
    ("standard", -1, 1), ("zero_one", 0, 1), ("identity", 0, 16)])
def test_scalers(scaler, low, high):
    x = dataloader.scale(np.array([0.0, 16.0]), scaler, 16.0)
    assert x.dtype == np.float32 and x.tolist() == [low, high]


def test_digits_pipelines_for_both_problems():
    data = dataloader.load(settings(dataset="digits", batch_size=32))
    x, y = next(iter(data.train))
    assert x.shape == (32, 8, 8, 1) and y.shape == (32, 10)
    assert data.validation is not None  # the default objective is val_loss
    recon = dataloader.load(settings(dataset="digits", batch_size=32,
                                     problem_type="reconstruction",
                                     objective="loss"))
    x, target = next(iter(recon.test))
    np.testing.assert_array_equal(x, target)
    assert recon.validation is None and recon.target_dim == 64


def test_the_readme_lists_every_dataset_and_its_files():
    """README's table of data files is datasets.SPECS' (digits: none)."""
    import re

    from conftest import ROOT
    with open(os.path.join(ROOT, "README.md")) as f:
        rows = dict(re.findall(r"^\| (\w+) \| (.+) \|$", f.read(), re.M))
    for name, spec in datasets.SPECS.items():
        if name == "digits":
            continue
        assert name in rows, name
        assert rows[name].replace("`", "") == spec.files.replace(
            "`", ""), name


@pytest.mark.parametrize("shape", [(7, 5, 4, 1), (6, 4, 3, 3)])
@pytest.mark.parametrize("scaler", ["standard", "zero_one", "normalize",
                                    "identity"])
def test_scaling_in_place_is_bitwise_the_float32_arithmetic(shape, scaler):
    """Each value is the scaler's float32 arithmetic, operation by
    operation (per channel for normalize), done in place; the caller's
    array is left as it was."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    x.flat[:2] = (0, 255)
    statistics = dataloader.channel_statistics(x)
    mean, std = (s.astype(np.float32) for s in statistics)
    expected = {"standard": x.astype(np.float32) * np.float32(2 / 255.0)
                - np.float32(1),
                "zero_one": x.astype(np.float32) * np.float32(1 / 255.0),
                "normalize": (x.astype(np.float32) - mean) / std,
                "identity": x.astype(np.float32)}[scaler]
    kept = x.copy()
    scaled = dataloader.scale(x, scaler, 255.0, statistics)
    assert scaled.dtype == np.float32 and scaled.shape == shape
    assert scaled.tobytes() == expected.tobytes()
    assert x.tobytes() == kept.tobytes()


@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 1), (65, 3)])
def test_scaled_arrays_become_tensors_without_a_copy(shape):
    """`float32_copy` aligns its data as TF's kernels assume, so
    `as_tensor` shares them; slices and gathers of such a tensor (kernels
    that check alignment, and abort the process when it is wrong) give
    the array's values.  An unaligned array is copied instead."""
    import tensorflow as tf
    x = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    scaled = host_tensors.float32_copy(x)
    assert scaled.ctypes.data % host_tensors.TF_ALIGNMENT == 0
    assert scaled.tobytes() == x.astype(np.float32).tobytes()
    tensor = host_tensors.as_tensor(scaled)
    assert tensor.numpy().tobytes() == scaled.tobytes()
    assert tf.gather(tensor, [0, 0]).numpy().tobytes() == \
        scaled[[0, 0]].tobytes()
    assert tensor[-1:].numpy().tobytes() == scaled[-1:].tobytes()
    kept_alive = host_tensors.as_tensor(host_tensors.float32_copy(x))
    gc.collect()  # (the array's only owner is now the tensor)
    overwritten = [np.full(x.size, 7.0, np.float32) for _ in range(20)]
    assert kept_alive.numpy().tobytes() == scaled.tobytes(), overwritten
    written = host_tensors.float32_copy(x)  # (the test writes to it: no
    shared = host_tensors.as_tensor(written)  # run does)
    written.flat[0] = 99.0
    assert float(tf.reshape(shared, [-1])[0]) == 99.0  # no copy was made
    buffer = np.empty(scaled.nbytes + 128, np.uint8)
    start = -buffer.ctypes.data % 64 + 4
    unaligned = buffer[start:start + scaled.nbytes].view(
        np.float32).reshape(shape)
    unaligned[...] = scaled
    copied = host_tensors.as_tensor(unaligned)
    unaligned.flat[0] = 99.0
    assert copied.numpy().tobytes() == scaled.tobytes()
