"""The step's metrics (step_metrics.py) give bitwise Keras' numbers, and a
first trial traces each step once."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import hparams
import model as model_lib
import step_metrics
import train


def keras_metrics():
    """What the model updated before: Keras' own three metrics."""
    def error_rate(y_true, y_pred):
        return 1.0 - keras.metrics.categorical_accuracy(y_true, y_pred)
    return [keras.metrics.Mean(name="loss"),
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.MeanMetricWrapper(error_rate, name="error_rate")]


def keras_update(metrics, loss, target, y_pred):
    metrics[0].update_state(loss, sample_weight=tf.cast(
        tf.shape(y_pred)[0], loss.dtype))
    for metric in metrics[1:]:
        metric.update_state(target, y_pred)


def batches(seed=0, classes=10):
    """Batches of several sizes: random logits, logits with exact ties
    (equal maxima: the first class must win), rows that become NaN, and
    logits close enough that softmax rounds them to one probability."""
    rng = np.random.default_rng(seed)
    for size in (64, 64, 17, 1, 64, 33):
        z = rng.normal(0, 3, (size, classes)).astype(np.float32)
        z[: size // 4, 3] = z[: size // 4, 7] = 50.0  # exact ties
        z[size // 4: size // 3, 2] = 40.0
        z[size // 4: size // 3, 5] = np.nextafter(np.float32(40.0),
                                                  np.float32(50.0))
        if size == 17:
            z[-2:] = np.nan
        labels = rng.integers(0, classes, size)
        labels[: size // 4] = rng.choice([3, 7], size // 4)
        labels[size // 4: size // 3] = 5
        target = np.eye(classes, dtype=np.float32)[labels]
        loss = np.float32(rng.uniform(0.1, 3.0))
        yield tf.constant(loss), tf.constant(target), tf.nn.softmax(z)


@pytest.mark.parametrize("jit", [True, False])
def test_step_metrics_are_bitwise_keras(jit):
    ours, theirs = step_metrics.make(True), keras_metrics()
    update_ours = tf.function(
        lambda *a: step_metrics.update(ours, *a), jit_compile=jit)
    update_theirs = tf.function(
        lambda *a: keras_update(theirs, *a), jit_compile=jit)
    for loss, target, y_pred in batches():
        update_ours(loss, target, y_pred)
        update_theirs(loss, target, y_pred)
        for a, b in zip(ours, theirs):
            assert a.name == b.name
            for x, y in zip(a.variables, b.variables):
                assert x.numpy().tobytes() == y.numpy().tobytes(), a.name
            assert a.result().numpy().tobytes() == \
                b.result().numpy().tobytes(), a.name
    assert 0 < float(ours[1].result()) < 1  # (the test can fail)


def test_regression_has_the_loss_alone():
    ours, theirs = step_metrics.make(False), keras.metrics.Mean(name="loss")
    target = tf.zeros((5, 784))
    for loss in (0.25, 0.125, 3.0):
        loss = tf.constant(loss)
        step_metrics.update(ours, loss, target, None)
        theirs.update_state(loss, sample_weight=5.0)
    assert [m.name for m in ours] == ["loss"]
    assert ours[0].result().numpy() == theirs.result().numpy()


def test_a_first_trial_traces_each_step_once(tmp_path, monkeypatch):
    """The optimizers' slots exist before fit: a tf.function whose first
    trace creates variables traces it a second time."""
    traced = {"train_step": 0, "test_step": 0}
    for name in traced:
        real = getattr(model_lib.ProjectionModel, name)

        def counting(self, data, real=real, name=name):
            traced[name] += 1
            return real(self, data)
        monkeypatch.setattr(model_lib.ProjectionModel, name, counting)
    monkeypatch.setenv("BPFREE_STEP_REUSE", "off")
    hp = hparams.make(dataset="digits", arch="16", algorithm="dfa",
                      epochs=1, batch_size=64, examples_frac=0.5,
                      objective="val_loss", validation_frac=0.2)
    train.train_and_evaluate(hp, str(tmp_path / "run"), verbose=0)
    assert traced == {"train_step": 1, "test_step": 1}
