"""Datasets as tf.data pipelines.

Raw arrays come from `datasets.py`.  Then, all seeded: a stratified
`examples_frac` of the training split, an optional class skew, a stratified
validation split when the objective needs one, scaling, one-hot labels (or
the input as target for reconstruction).  Images stay images (N, H, W, C),
resized per batch to `--image_size` when it is set; dense blocks flatten
them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import hparams as hparams_lib
from datasets import load_arrays
from host_tensors import as_tensor, float32_copy
from runtime.errors import UsageError

AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TensorFlow here


@dataclasses.dataclass
class Data:
    train: object  # tf.data.Dataset
    validation: object | None
    test: object
    input_shape: tuple
    target_dim: int
    steps_per_epoch: int
    # MSE of predicting the mean training image (reconstruction; else NaN)
    mean_image_test_loss: float
    epoch: object = None  # tf.Variable: the epoch whose order `train` yields

    def set_epoch(self, epoch: int) -> None:
        """Selects the shuffle order of `epoch` for the next pass."""
        self.epoch.assign(epoch)


# --- Subsets, skew, validation ----------------------------------------------


def class_sizes(counts: np.ndarray, skew_type: str, factor: float):
    """How many examples of each class to keep.

    long_tailed: n_c = n_max · factor^(−c/(C−1)) (exponential decay over the
    class index); step: the second half of the classes keep n_max/factor.
    """
    n_max, classes = counts.max(), len(counts)
    if skew_type == "none":
        wanted = counts
    elif skew_type == "long_tailed":
        wanted = n_max * factor ** (-np.arange(classes) / max(classes - 1, 1))
    elif skew_type == "step":
        wanted = np.where(np.arange(classes) < classes // 2, n_max,
                          n_max / factor)
    else:
        raise UsageError(f"unknown skew_type '{skew_type}' "
                         f"(valid: {', '.join(hparams_lib.SKEW_TYPES)})")
    return np.minimum(counts, np.maximum(1, np.floor(wanted))).astype(int)


def subsample(y: np.ndarray, fraction: float, skew_type: str, factor: float,
              num_classes: int, seed: int) -> np.ndarray:
    """Indices of a stratified fraction of y, optionally skewed."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y, minlength=num_classes)
    keep = np.maximum(1, np.round(counts * fraction)).astype(int)
    keep = np.where(counts > 0, keep, 0)
    keep = class_sizes(keep, skew_type, factor)
    picked = [rng.permutation(np.flatnonzero(y == c))[:keep[c]]
              for c in range(num_classes)]
    return np.sort(np.concatenate(picked))


def validation_split(y: np.ndarray, fraction: float, seed: int):
    """Seeded stratified (train, validation) index arrays."""
    rng = np.random.default_rng(seed + 1)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(len(idx) * fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def channel_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of raw images (N, H, W, C)
    (for `normalize`: computed on the training split alone)."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)


def scale(x: np.ndarray, scaler: str, max_value: float,
          statistics=None) -> np.ndarray:
    """Raw values to the network's input scale, in float32.  `normalize`
    needs the training split's `channel_statistics`, as torchvision's
    Normalize with dataset statistics.  The arithmetic runs in place on the
    one float32 copy: the same float32 operations, in the same order, as
    `x.astype(float32) * c - 1`, without a new array per operation (the
    first touch of each new array's pages is most of the time on MNIST)."""
    if scaler not in hparams_lib.SCALERS:
        raise UsageError(f"unknown scaler '{scaler}' "
                         f"(valid: {', '.join(hparams_lib.SCALERS)})")
    x = float32_copy(x)  # (the caller's array is kept)
    if scaler == "standard":
        x *= np.float32(2.0 / max_value)
        x -= np.float32(1.0)
    elif scaler == "zero_one":
        x *= np.float32(1.0 / max_value)
    elif scaler == "normalize":
        mean, std = statistics
        x -= mean.astype(np.float32)
        x /= std.astype(np.float32)
    return x  # (identity: the float32 copy)


# --- Pipelines ----------------------------------------------------------------


def needs_validation(hp) -> bool:
    return hp["objective"].startswith("val_") and hp["validation_frac"] > 0


def load(hp) -> Data:
    """The train/validation/test pipelines a run needs."""
    import tensorflow as tf
    arrays = prepared(hp)
    classify = hp["problem_type"] == "classification"
    augmentation = training_augmentation(hp, arrays.x_train,
                                         arrays.pad_value)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    size = hp.get("image_size") or 0

    def resized(ds):  # (ds: batched and prefetched already)
        if not size:
            return ds
        # Per batch: a whole resized split may not fit in memory.
        return without_autotune(ds.map(
            plain_graph(lambda x, t: (
                tf.image.resize(x, (size, size), antialias=True), t)),
            num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(
                AUTOTUNE))

    def pipeline(x, target):
        ds = tf.data.Dataset.from_tensor_slices((x, target))
        return resized(without_autotune(
            ds.batch(hp["batch_size"]).prefetch(AUTOTUNE)))
    x_tr = arrays.x_train
    return Data(
        train=resized(shuffled_batches(
            x_tr, arrays.target_train, hp["batch_size"], hp["seed"], epoch,
            augment=augmentation, target_is_input=not classify)),
        validation=(pipeline(arrays.x_val, arrays.target_val)
                    if arrays.x_val is not None else None),
        test=pipeline(arrays.x_test, arrays.target_test),
        input_shape=((size, size, x_tr.shape[3]) if size
                     else tuple(x_tr.shape[1:])),
        target_dim=(arrays.num_classes if classify
                    else int(np.prod(x_tr.shape[1:]))),
        steps_per_epoch=-(-int(x_tr.shape[0]) // hp["batch_size"]),
        mean_image_test_loss=arrays.baseline,
        epoch=epoch)


# --- Arrays shared by the runs of a process -----------------------------------


@dataclasses.dataclass
class Prepared:
    """A run's examples, scaled, with their targets (one-hot labels, or the
    input itself), as tensors; validation None when none is held out."""

    x_train: object
    target_train: object
    x_val: object
    target_val: object
    x_test: object
    target_test: object
    num_classes: int
    pad_value: np.ndarray  # what a raw 0 pixel becomes (crop padding)
    baseline: float  # MSE of predicting the mean training image
    raw: object = None  # the datasets.Arrays they were made from

    def nbytes(self) -> int:
        return sum(int(np.prod(t.shape)) * t.dtype.size for t in (
            self.x_train, self.target_train, self.x_val, self.target_val,
            self.x_test, self.target_test) if t is not None)


# Fields that do not change a run's arrays: runs that differ only in these
# share them.  (Any other field, a new one included, is part of the key.)
NOT_DATA = frozenset((
    "algorithm", "arch", "activation", "batch_norm", "bn_momentum",
    "bn_epsilon", "dropout", "bw_init", "use_bias", "init", "optimizer",
    "lr", "momentum", "adam_epsilon", "weight_decay", "lr_schedule",
    "lr_decay", "lr_decay_epochs", "warmup_epochs", "fb_optimizer", "fb_lr",
    "fb_weight_decay", "fb_lr_decay", "batch_size", "epochs", "augment",
    "executions_per_trial", "use_xla", "steps_per_execution", "tracker",
    "tracker_every", "histogram_freq", "precision", "data_dir",
    "feedback_points"))
CACHE_BYTES = 2 ** 30  # kept beyond the most recent entry
_cache: dict = {}  # data key -> Prepared, least recently used first


def data_key(hp) -> tuple:
    """What a run's arrays depend on: its data settings and the folder they
    are read from."""
    import datasets
    return (datasets.resolve_dir(hp), *sorted(
        (k, str(v)) for k, v in hp.items() if k not in NOT_DATA))


def prepared(hp) -> Prepared:
    """The run's arrays, made once per process for every run with the same
    data settings (a sweep's trials, an execution's reruns): subsetting,
    scaling and the copy into tensors are not redone per trial."""
    key = data_key(hp)
    arrays = _cache.pop(key, None)
    if arrays is None or arrays.raw is not load_arrays(hp):
        arrays = prepare(hp)  # (new raw arrays: the files were read again)
    _cache[key] = arrays  # the most recent last
    while len(_cache) > 1 and sum(a.nbytes() for a in _cache.values()) \
            > CACHE_BYTES:
        del _cache[next(iter(_cache))]
    return arrays


def training_split(hp, raw):
    """(x_train, y_train, x_val, y_val) of the run, raw; val None when no
    validation is held out."""
    idx = subsample(raw.y_train, hp["examples_frac"], hp["skew_type"],
                    hp["imbalance_factor"], raw.num_classes, hp["seed"])
    x_tr, y_tr = raw.x_train[idx], raw.y_train[idx]
    if not needs_validation(hp):
        return x_tr, y_tr, None, None
    tr, val = validation_split(y_tr, hp["validation_frac"], hp["seed"])
    return x_tr[tr], y_tr[tr], x_tr[val], y_tr[val]


def network_inputs(x, hp) -> np.ndarray:
    """Raw examples of the run's dataset (as its files hold them: a
    channel axis is added where they have none) as the run's network reads
    them: scaled as its training split was (`normalize`: with that split's
    statistics) and resized to --image_size.  For a model loaded from a
    run (bpfree.inputs)."""
    raw = load_arrays(hp)
    x = np.asarray(x)
    if x.ndim == raw.x_test.ndim - 1:
        x = x[..., None]
    statistics = (channel_statistics(training_split(hp, raw)[0])
                  if hp["scaler"] == "normalize" else None)
    x = scale(x, hp["scaler"], raw.max_value, statistics)
    size = hp.get("image_size") or 0
    if size:
        import tensorflow as tf
        x = tf.image.resize(x, (size, size), antialias=True).numpy()
    return x


def prepare(hp) -> Prepared:
    raw = load_arrays(hp)
    x_tr, y_tr, x_val, y_val = training_split(hp, raw)
    classify = hp["problem_type"] == "classification"
    statistics = (channel_statistics(x_tr) if hp["scaler"] == "normalize"
                  else None)  # the training split's alone

    def scaled(x):
        return scale(x, hp["scaler"], raw.max_value, statistics)

    def tensors(x, y):
        if x is None:
            return None, None
        target = (np.eye(raw.num_classes, dtype=np.float32)[y] if classify
                  else x)
        return as_tensor(x), as_tensor(target)
    x_tr, x_te = scaled(x_tr), scaled(raw.x_test)
    if x_val is not None:
        x_val = scaled(x_val)
    baseline = (float("nan") if classify else  # (reconstruction's alone)
                float(np.mean(np.square(x_te - x_tr.mean(axis=0)))))
    # What a raw 0 pixel becomes: torchvision pads the raw image.
    pad_value = scaled(np.zeros((1,) * (x_tr.ndim - 1) + x_tr.shape[-1:]))
    return Prepared(*tensors(x_tr, y_tr), *tensors(x_val, y_val),
                    *tensors(x_te, raw.y_test), raw.num_classes,
                    pad_value.reshape(-1), baseline, raw)


def training_augmentation(hp, x_train, pad_value):
    """`--augment`'s function of a training batch, or None; refuses data
    that are not images."""
    import augment
    if hp["augment"] == "none":
        return None
    if len(x_train.shape) != 4:
        raise UsageError(f"--augment={hp['augment']} needs images (N, H, W, "
                         f"C); {hp['dataset']} gives examples of shape "
                         f"{tuple(x_train.shape[1:])} (valid for it: none)")
    return augment.augmenter(hp["augment"], pad_value)


def shuffled_batches(x, target, batch_size, seed, epoch, augment=None,
                     target_is_input=False):
    """Batches in an order that depends only on (seed, epoch).

    The order of a pass is a stateless permutation keyed by the value of the
    `epoch` variable when the pass begins, so a run resumed at epoch k sees
    exactly the batches an uninterrupted run sees at epoch k.  (tf.data's
    own reshuffling restarts its sequence of orders in a new process.)
    Batches are gathered from the arrays by index, one gather per batch.
    `augment(images, key)` then transforms each batch with draws keyed by
    (seed, epoch, batch index), the target too when it is the input.
    """
    import tensorflow as tf

    import augment as augment_lib
    x, target = tf.constant(x), tf.constant(target)
    n = int(x.shape[0])

    @plain_graph
    def order(_):
        pass_epoch = epoch.read_value()
        key = tf.stack([tf.constant(seed, tf.int64), pass_epoch])
        indices = tf.random.experimental.stateless_shuffle(tf.range(n),
                                                           seed=key)
        return tf.data.Dataset.from_tensor_slices(
            (indices, tf.fill([n], pass_epoch)))

    @plain_graph
    def gather(batch_index, batch):
        idx, epochs = batch
        images = tf.gather(x, idx)
        if augment is None:
            return images, tf.gather(target, idx)
        images = augment(images, augment_lib.batch_key(seed, epochs[0],
                                                        batch_index))
        return images, images if target_is_input else tf.gather(target, idx)

    # flat_map hides the length; Keras needs it to plan its steps.
    return without_autotune(
        tf.data.Dataset.from_tensors(0).flat_map(order)
        .apply(tf.data.experimental.assert_cardinality(n))
        .batch(batch_size)
        .enumerate()
        .map(gather, num_parallel_calls=AUTOTUNE, deterministic=True)
        .prefetch(AUTOTUNE))


def plain_graph(function):
    """A dataset function traced as written, not rewritten by AutoGraph:
    it has no control flow on tensors, and AutoGraph's rewrite of the two
    functions of a training pipeline took 0.3 s of a process's first
    trial (its source parsed and transformed)."""
    import tensorflow as tf
    return tf.autograph.experimental.do_not_convert(function)


def without_autotune(ds):
    """`ds` without tf.data's autotuning model.

    Its optimisation thread makes the destruction of a finished iterator
    wait, with no CPU use, for up to its current optimisation period, which
    grows with the iterator's life: Keras drops each epoch's training
    iterator when the next epoch's first batch is read, and that wait (up
    to 9.6 s on 800-800 MNIST, measured) fell inside the next epoch.
    Without the model, map still runs its calls in parallel (one per core)
    and prefetch sizes its buffer by itself; the batches are the same."""
    import tensorflow as tf
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
