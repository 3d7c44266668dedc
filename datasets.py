"""The datasets: what each is (`SPECS`, the one table of them: its images,
classes, default arch, files and loader) and its raw arrays, read from a
data folder.

The folder is `--data_dir`, else $BPFREE_DATA_DIR, else Keras' cache (where
Keras downloads what is absent).  Everything else that knows datasets (the
`--dataset` flag's choices, the checks of an arch against the images, the
default arch) reads SPECS: adding a dataset is a loader and a row here.

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
import zipfile
import zlib
from typing import Callable

import numpy as np

from runtime.errors import DataError, UsageError

DATA_DIR_ENV = "BPFREE_DATA_DIR"


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


def data_dir(hp) -> str:
    """The data folder: --data_dir, else $BPFREE_DATA_DIR, else ''."""
    return hp["data_dir"] or os.environ.get(DATA_DIR_ENV, "")


def resolve_dir(hp) -> tuple[str, bool]:
    """(folder, explicit): explicit when the user named it."""
    folder = data_dir(hp)
    return (folder, True) if folder else (_keras_cache_dir(), False)


def _missing(dataset, path, explicit):
    where = "--data_dir/$" + DATA_DIR_ENV if explicit else "Keras' cache"
    return DataError(f"{dataset}: data file '{path}' not found (looked in "
                     f"{where}); put the file there or point --data_dir at "
                     "the folder holding it")


def _corrupt(dataset, path, problem):
    return DataError(f"{dataset}: data file '{path}' is unusable ({problem});"
                     " replace it with the original file")


# What reading a damaged file raises: a truncated or foreign zip, gzip or
# pickle, or one without the expected arrays.
READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError,
               TypeError, AttributeError, zlib.error, zipfile.BadZipFile,
               pickle.UnpicklingError, tarfile.TarError)


def _why(error) -> str:
    text = str(error).splitlines()[0][:100] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else \
        type(error).__name__


def _checked(dataset, path, x, y, classes, image_dims):
    """(x, y) of one split, refused unless they look like the dataset's:
    images of `image_dims` dimensions, one integer label in [0, classes)
    per image."""
    if x.ndim != image_dims or y.ndim != 1 or len(x) != len(y) \
            or not len(x):
        raise _corrupt(dataset, path, f"{x.shape} images and {y.shape} "
                       "labels do not match")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 \
            or y.max() >= classes:
        raise _corrupt(dataset, path, f"labels are not integers in "
                       f"[0, {classes})")
    return x, y


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


MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_mnist(folder, explicit) -> Arrays:
    path = os.path.join(folder, "mnist.npz")
    if not os.path.exists(path):
        if explicit:
            raise _missing("mnist", path, explicit)
        return _keras_arrays("mnist", "mnist", 10)
    # Read directly: Keras' loader checks a hash that repacked copies of the
    # same arrays fail, and would then delete the file.
    try:
        with np.load(path, allow_pickle=False) as f:
            absent = [k for k in MNIST_KEYS if k not in f.files]
            if absent:
                raise _corrupt("mnist", path, f"no array {absent[0]}; "
                               f"Keras' layout has {', '.join(MNIST_KEYS)}")
            arrays = {k: np.asarray(f[k]) for k in MNIST_KEYS}
    except DataError:
        raise
    except READ_ERRORS as error:  # (np.load of a .npy has no .files)
        raise _corrupt("mnist", path, "not a complete .npz archive of "
                       f"arrays ({type(error).__name__})")
    x_tr, y_tr = _checked("mnist", path, arrays["x_train"],
                          arrays["y_train"], 10, 3)
    x_te, y_te = _checked("mnist", path, arrays["x_test"], arrays["y_test"],
                          10, 3)
    return Arrays(x_tr[..., None], y_tr, x_te[..., None], y_te, 255.0, 10)


def _read_idx(dataset, path, ndim) -> np.ndarray:
    """An IDX file (gzipped): magic 0x0000 08 <ndim>, ndim big-endian
    sizes, then the uint8 data."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except READ_ERRORS as error:  # not gzip, or cut short
        raise _corrupt(dataset, path, f"not a complete gzip file: "
                       f"{_why(error)}")
    header = 4 + 4 * ndim
    if len(data) < header or data[:3] != b"\0\0\x08" or data[3] != ndim:
        raise _corrupt(dataset, path, f"not an IDX file of {ndim}-D uint8 "
                       "data")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
            for i in range(ndim)]
    if len(data) != header + int(np.prod(dims)):
        raise _corrupt(dataset, path, f"{len(data) - header} bytes of data "
                       f"for a {dims} array: truncated")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _fmnist_folder(folder) -> str | None:
    """Where the four files are: fashion-mnist/ or the folder itself."""
    for candidate in (os.path.join(folder, "fashion-mnist"), folder):
        if all(os.path.exists(os.path.join(candidate, n))
               for n in FMNIST_FILES):
            return candidate
    return None


def load_fmnist(folder, explicit) -> Arrays:
    found = _fmnist_folder(folder)
    if found is None:
        if not explicit:
            return _keras_arrays("fmnist", "fashion_mnist", 10)
        # Name a file that is missing where the user put the others (the
        # fashion-mnist/ subfolder unless the folder itself holds some).
        sub = os.path.join(folder, "fashion-mnist")
        where = folder if not os.path.isdir(sub) and any(
            os.path.exists(os.path.join(folder, n)) for n in FMNIST_FILES) \
            else sub
        missing = next(n for n in FMNIST_FILES
                       if not os.path.exists(os.path.join(where, n)))
        raise _missing("fmnist", os.path.join(where, missing), explicit)
    paths = [os.path.join(found, name) for name in FMNIST_FILES]
    x_tr, y_tr, x_te, y_te = (_read_idx("fmnist", p, n)
                              for p, n in zip(paths, (3, 1, 3, 1)))
    _checked("fmnist", paths[1], x_tr, y_tr, 10, 3)
    _checked("fmnist", paths[3], x_te, y_te, 10, 3)
    return Arrays(x_tr[..., None], y_tr, x_te[..., None], y_te, 255.0, 10)


CIFAR = {  # dataset: (folder, tarball, train files, test files, label key)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"],
                 ["test"], "fine_labels", 100),
}


def _cifar_batch(name, path, raw: bytes, label_key: str, classes: int):
    """(images, labels) of one pickled CIFAR batch; `path` names it."""
    try:
        batch = pickle.loads(raw, encoding="bytes")
        x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[label_key.encode()], np.int64)
    except READ_ERRORS as error:
        raise _corrupt(name, path, f"not a CIFAR batch (a pickled dict with "
                       f"b'data' and b'{label_key}'): {_why(error)}")
    return _checked(name, path, x.transpose(0, 2, 3, 1), y, classes, 4)


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
                    return path, f.read()
            raws = [read(n) for n in files]
        elif os.path.exists(os.path.join(folder, tarball)):
            raws = _tar_members(name, os.path.join(folder, tarball),
                                [f"{sub}/{n}" for n in files])
        elif explicit:
            raise _missing(name, os.path.join(folder, sub), explicit)
        else:
            return _keras_arrays(name, name, classes)
        batches = [_cifar_batch(name, path, raw, label_key, classes)
                   for path, raw in raws]
        n_train = len(train_files)
        x_tr = np.concatenate([b[0] for b in batches[:n_train]])
        y_tr = np.concatenate([b[1] for b in batches[:n_train]])
        x_te = np.concatenate([b[0] for b in batches[n_train:]])
        y_te = np.concatenate([b[1] for b in batches[n_train:]])
        return Arrays(x_tr, y_tr, x_te, y_te, 255.0, classes)
    return load


def _tar_members(name, tarball, members) -> list[tuple[str, bytes]]:
    """[(tarball:member, bytes)] of the members, refusing a damaged or
    incomplete archive."""
    try:
        with tarfile.open(tarball) as tar:
            names = set(tar.getnames())
            absent = [m for m in members if m not in names]
            if absent:
                raise _corrupt(name, tarball, f"no member {absent[0]}")
            return [(f"{tarball}:{m}", tar.extractfile(m).read())
                    for m in members]
    except DataError:
        raise
    except READ_ERRORS as error:
        raise _corrupt(name, tarball, f"not a complete .tar.gz: "
                       f"{_why(error)}")


def _keras_arrays(dataset, module, classes) -> Arrays:
    """Lets Keras load (downloading into its cache) a dataset we did not
    find on disk."""
    import keras
    try:
        (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets,
                                             module).load_data()
    except Exception as error:  # no network, bad download...
        raise DataError(f"{dataset}: not in Keras' cache "
                        f"({_keras_cache_dir()}) and the download failed "
                        f"({type(error).__name__}); point --data_dir at a "
                        "folder holding the files") from None
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


# --- The table ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is, known without its files (so that flags and archs
    are checked before anything is read)."""

    shape: tuple  # (H, W, C) of the images the loader gives
    classes: int
    default_arch: str  # trained when --arch is not given
    files: str  # what the data folder holds (README, errors)
    load: Callable[[str, bool], Arrays]  # (folder, explicit) -> Arrays


# Grey images keep the MLP; colour images get the DKP reference's CNN (the
# network of the headline CIFAR comparison), which fits any image of at
# least 6×6 pixels.
SPECS = {
    "digits": DatasetSpec((8, 8, 1), 10, "256-256", "nothing: "
                          "scikit-learn's embedded 8×8 digits (offline)",
                          load_digits),
    "mnist": DatasetSpec((28, 28, 1), 10, "256-256",
                         "mnist.npz (Keras layout)", load_mnist),
    "fmnist": DatasetSpec((28, 28, 1), 10, "256-256", "fashion-mnist/ or "
                          "the folder itself: the four original "
                          "*-ubyte.gz", load_fmnist),
    "cifar10": DatasetSpec((32, 32, 3), 10, "dkp_cifar10",
                           "cifar-10-batches-py/ or cifar-10-python.tar.gz",
                           load_cifar("cifar10")),
    "cifar100": DatasetSpec((32, 32, 3), 100, "dkp_cifar10",
                            "cifar-100-python/ or cifar-100-python.tar.gz",
                            load_cifar("cifar100")),
    "eurosat": DatasetSpec((64, 64, 3), 10, "dkp_cifar10", "tensorflow-"
                           "datasets' eurosat/rgb (the folder is tfds' "
                           "data_dir)", load_eurosat),
    "caltech256": DatasetSpec((*CALTECH_IMAGE_SIZE, 3), 256, "dkp_cifar10",
                              "256_ObjectCategories/ (one folder per class; "
                              "resized to 64×64)", load_caltech256),
}


def load_arrays(hp) -> Arrays:
    """The raw arrays of hp's dataset (read once per process: the trials of
    a sweep share them)."""
    if hp["dataset"] not in SPECS:
        raise UsageError(f"unknown dataset '{hp['dataset']}' "
                         f"(valid: {', '.join(SPECS)})")
    return _cached_arrays(hp["dataset"], *resolve_dir(hp))


@functools.lru_cache(maxsize=2)
def _cached_arrays(dataset, folder, explicit) -> Arrays:
    return SPECS[dataset].load(folder, explicit)
