"""Raw datasets as numpy arrays, read from a data folder.

The folder is `--data_dir`, else $BPFREE_DATA_DIR, else Keras' cache (where
Keras downloads what is absent):

    digits      scikit-learn's embedded 8×8 digits (no files, works offline)
    mnist       mnist.npz (Keras layout)
    fmnist      fashion-mnist/*-ubyte.gz (the four original files)
    cifar10     cifar-10-batches-py/ or cifar-10-python.tar.gz (Keras' files)
    cifar100    cifar-100-python/ or cifar-100-python.tar.gz
    eurosat     tensorflow-datasets' eurosat/rgb in <dir> (tfds' data_dir)
    caltech256  256_ObjectCategories/ (one folder per class, clutter left out)

TensorFlow-free except where a loader needs it (eurosat, caltech256, Keras'
downloads); arrays are read once per process (`load_arrays`).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import pickle
import tarfile

import numpy as np

import hparams as hparams_lib
from errors import DataError, UsageError


@dataclasses.dataclass
class Arrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    max_value: float  # of the raw pixels, for scaling
    num_classes: int


# --- Raw arrays ---------------------------------------------------------------


def _keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME",
                                       os.path.expanduser("~/.keras")),
                        "datasets")


def resolve_dir(hp) -> tuple[str, bool]:
    """(folder, explicit): explicit when the user named it."""
    folder = hparams_lib.data_dir(hp)
    return (folder, True) if folder else (_keras_cache_dir(), False)


def _missing(dataset, path, explicit):
    where = "--data_dir/$" + hparams_lib.DATA_DIR_ENV if explicit else \
        "Keras' cache"
    return DataError(f"{dataset}: data file '{path}' not found (looked in "
                     f"{where}); put the file there or point --data_dir at "
                     "the folder holding it")


def load_digits(folder, explicit) -> Arrays:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split
    x, y = sk_digits(return_X_y=True)
    x = x.reshape(-1, 8, 8, 1).astype(np.float32)
    # Fixed split (seed 0), like the published datasets: the test set is the
    # same whatever the run's seed.
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0)
    return Arrays(x_tr, y_tr, x_te, y_te, 16.0, 10)


def load_mnist(folder, explicit) -> Arrays:
    path = os.path.join(folder, "mnist.npz")
    if not os.path.exists(path):
        if explicit:
            raise _missing("mnist", path, explicit)
        return _keras_arrays("mnist", 10)
    # Read directly: Keras' loader checks a hash that repacked copies of the
    # same arrays fail, and would then delete the file.
    with np.load(path) as f:
        return Arrays(f["x_train"][..., None], f["y_train"],
                      f["x_test"][..., None], f["y_test"], 255.0, 10)


def _read_idx(path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
            for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def load_fmnist(folder, explicit) -> Arrays:
    for sub in ("fashion-mnist", ""):
        paths = [os.path.join(folder, sub, name) for name in FMNIST_FILES]
        if all(os.path.exists(p) for p in paths):
            break
    else:
        if explicit:
            missing = next(p for p in paths if not os.path.exists(p))
            raise _missing("fmnist", missing, explicit)
        return _keras_arrays("fashion_mnist", 10)
    x_tr, y_tr, x_te, y_te = (_read_idx(p) for p in paths)
    return Arrays(x_tr[..., None], y_tr, x_te[..., None], y_te, 255.0, 10)


CIFAR = {  # dataset: (folder, tarball, train files, test files, label key)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"],
                 ["test"], "fine_labels", 100),
}


def _cifar_batch(raw: bytes, label_key: str):
    batch = pickle.loads(raw, encoding="bytes")
    x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(batch[label_key.encode()], np.int64)
    return x.transpose(0, 2, 3, 1), y


def load_cifar(name):
    sub, tarball, train_files, test_files, label_key, classes = CIFAR[name]

    def load(folder, explicit) -> Arrays:
        files = train_files + test_files
        if os.path.isdir(os.path.join(folder, sub)):
            def read(n):
                path = os.path.join(folder, sub, n)
                if not os.path.exists(path):
                    raise _missing(name, path, explicit)
                with open(path, "rb") as f:
                    return f.read()
            raws = [read(n) for n in files]
        elif os.path.exists(os.path.join(folder, tarball)):
            with tarfile.open(os.path.join(folder, tarball)) as tar:
                raws = [tar.extractfile(f"{sub}/{n}").read() for n in files]
        elif explicit:
            raise _missing(name, os.path.join(folder, sub), explicit)
        else:
            return _keras_arrays(name, classes)
        batches = [_cifar_batch(r, label_key) for r in raws]
        n_train = len(train_files)
        x_tr = np.concatenate([b[0] for b in batches[:n_train]])
        y_tr = np.concatenate([b[1] for b in batches[:n_train]])
        x_te = np.concatenate([b[0] for b in batches[n_train:]])
        y_te = np.concatenate([b[1] for b in batches[n_train:]])
        return Arrays(x_tr, y_tr, x_te, y_te, 255.0, classes)
    return load


def _keras_arrays(module, classes) -> Arrays:
    """Lets Keras load (downloading into its cache) a dataset we did not
    find on disk."""
    import keras
    try:
        (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets,
                                             module).load_data()
    except Exception as error:  # no network, bad download...
        raise DataError(f"{module}: not in Keras' cache and the download "
                        f"failed ({type(error).__name__}); point --data_dir "
                        "at a folder holding the files") from None
    if x_tr.ndim == 3:  # grey images: add the channel axis
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    return Arrays(x_tr, y_tr.ravel(), x_te, y_te.ravel(), 255.0, classes)


def _seeded_split(x, y, seed, test_size=0.2):
    """A seeded, non-overlapping train/test split, stratified when every
    class has at least two examples."""
    from sklearn.model_selection import train_test_split
    stratify = y if np.bincount(y).min(initial=2) >= 2 else None
    return train_test_split(x, y, test_size=test_size, stratify=stratify,
                            random_state=seed)


def load_eurosat(folder, explicit) -> Arrays:
    import tensorflow_datasets as tfds
    try:
        ds, info = tfds.load("eurosat/rgb", split="train", data_dir=folder
                             or None, download=not explicit, with_info=True,
                             as_supervised=True)
    except Exception as error:
        raise DataError(f"eurosat: cannot load tensorflow-datasets' "
                        f"eurosat/rgb from '{folder}' ({type(error).__name__}:"
                        f" {str(error).splitlines()[0][:120]})") from None
    batches = list(tfds.as_numpy(ds.batch(1024)))
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    # eurosat ships one split; carve a fixed test split (seed 0) so that
    # every run is scored on the same images.
    x_tr, x_te, y_tr, y_te = _seeded_split(x, y, seed=0)
    return Arrays(x_tr, y_tr, x_te, y_te, 255.0,
                  info.features["label"].num_classes)


CALTECH_IMAGE_SIZE = (64, 64)


def load_caltech256(folder, explicit) -> Arrays:
    import keras
    root = os.path.join(folder, "256_ObjectCategories")
    if not os.path.isdir(root):
        raise _missing("caltech256", root, True)
    classes = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d))
                     and not d.endswith("clutter"))
    ds = keras.utils.image_dataset_from_directory(
        root, labels="inferred", class_names=classes, batch_size=256,
        image_size=CALTECH_IMAGE_SIZE, shuffle=False, verbose=False)
    xs, ys = zip(*((x.numpy().astype(np.uint8), y.numpy()) for x, y in ds))
    x_tr, x_te, y_tr, y_te = _seeded_split(np.concatenate(xs),
                                           np.concatenate(ys), seed=0)
    return Arrays(x_tr, y_tr, x_te, y_te, 255.0, len(classes))


LOADERS = {"digits": load_digits, "mnist": load_mnist, "fmnist": load_fmnist,
           "cifar10": load_cifar("cifar10"),
           "cifar100": load_cifar("cifar100"),
           "eurosat": load_eurosat, "caltech256": load_caltech256}


def load_arrays(hp) -> Arrays:
    """The raw arrays of hp's dataset (read once per process: the trials of
    a sweep share them)."""
    if hp["dataset"] not in LOADERS:
        raise UsageError(f"unknown dataset '{hp['dataset']}' "
                         f"(valid: {', '.join(LOADERS)})")
    return _cached_arrays(hp["dataset"], *resolve_dir(hp))


@functools.lru_cache(maxsize=2)
def _cached_arrays(dataset, folder, explicit) -> Arrays:
    return LOADERS[dataset](folder, explicit)
