"""The metrics every train and test step updates: loss, and for
classification accuracy and error rate.

They are Keras `Mean` metrics (the same names, variables, results and
resets as `keras.metrics.Mean`, `CategoricalAccuracy` and a
`MeanMetricWrapper` of the error rate), fed each batch's sum and size
directly.  Keras' own updates trace 89 more ops per step for these three
(shape checks, sample-weight broadcasting, and an argmax that maps −0.0
below +0.0, twice per metric), which a process's first trial of a graph
traces for each step; XLA's compile of the step is not shorter (it
simplifies those ops away).  The numbers are bitwise Keras': the loss
total grows by loss · n, as Keras' sample-weighted mean does; a batch's
number of correct predictions is an exact integer in float32, so the
error total n − correct is exactly Keras' sum of (1 − match); and the
argmax needs no −0.0 fix here, since neither a softmax output nor a
one-hot target can hold −0.0
(tests/test_step_metrics.py).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from layers import PACKAGE


@keras.saving.register_keras_serializable(PACKAGE)
class BatchMean(keras.metrics.Mean):
    """keras.metrics.Mean, updated by a batch's sum and size."""

    def add(self, total, count) -> None:
        self.total.assign_add(total)
        self.count.assign_add(count)


def make(classify: bool) -> list:
    """[loss, accuracy, error_rate] (classification) or [loss]."""
    names = ("loss", "accuracy", "error_rate") if classify else ("loss",)
    return [BatchMean(name=name) for name in names]


def update(metrics: list, loss, target, y_pred) -> None:
    """One batch's mean loss (a float32 scalar), its targets and, for
    classification, its predicted probabilities (else None)."""
    size = tf.cast(tf.shape(target)[0], tf.float32)
    metrics[0].add(loss * size, size)
    if len(metrics) == 1:
        return
    matches = tf.cast(tf.equal(tf.argmax(target, -1, output_type=tf.int32),
                               tf.argmax(y_pred, -1, output_type=tf.int32)),
                      tf.float32)
    correct = tf.reduce_sum(matches)
    metrics[1].add(correct, size)
    metrics[2].add(size - correct, size)
