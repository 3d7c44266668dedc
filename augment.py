"""Training-set augmentation (`--augment`), keyed by (seed, epoch, batch).

    none       the images as they are
    flip       each image mirrored left-right with probability 1/2
    crop_flip  each image padded by 4 pixels on every side and cropped back
               to its size at a random offset, then flipped as above (the
               CIFAR standard: torchvision's RandomCrop(32, padding=4) and
               RandomHorizontalFlip)

The random draws are stateless functions of (seed, epoch, batch index), so
a run resumed at epoch k sees exactly the images an uninterrupted run sees
(Keras' preprocessing layers draw from a generator state that a new process
restarts).  Padding is with the value a raw 0 pixel takes after scaling
(torchvision pads the raw image), per channel.
"""

from __future__ import annotations

import tensorflow as tf

AUGMENTS = ("none", "flip", "crop_flip")
CROP_PADDING = 4
_SALT = 0x61756720  # keeps these draws apart from the shuffle's


def batch_key(seed, epoch, batch_index):
    """The stateless key of one training batch's draws."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    salted = tf.random.experimental.stateless_fold_in(base, _SALT)
    return tf.random.experimental.stateless_fold_in(
        salted, tf.cast(batch_index, tf.int64))


def random_flip(images, key):
    """Each image of the batch mirrored left-right with probability 1/2."""
    n = tf.shape(images)[0]
    flip = tf.random.stateless_uniform([n], seed=key) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]),
                    images)


def random_crop(images, key, padding=CROP_PADDING, pad_value=0.0):
    """Each image padded by `padding` and cropped back at its own random
    offset (uniform over the 2·padding + 1 positions per axis)."""
    n = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    pad_value = tf.cast(pad_value, images.dtype)
    padded = tf.pad(images - pad_value, [[0, 0], [padding, padding],
                                         [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [n, 2], seed=key, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
    return cropped + pad_value


def augmenter(kind: str, pad_value=0.0):
    """f(images, key) → images for `--augment=kind`, or None for none."""
    if kind == "none":
        return None
    if kind == "flip":
        return lambda images, key: random_flip(images, key)

    def crop_flip(images, key):
        crop_key, flip_key = tf.unstack(
            tf.random.experimental.stateless_split(key, 2))
        return random_flip(random_crop(images, crop_key,
                                       pad_value=pad_value), flip_key)
    return crop_flip
