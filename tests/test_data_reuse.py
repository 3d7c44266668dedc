"""What a trial no longer redoes or waits for: the scaled arrays of a run
are made once per process and shared by runs with the same data settings,
and no pipeline runs tf.data's autotuning model (whose thread made each
finished iterator's destruction wait, inside the next epoch)."""

import numpy as np

import dataloader
import hparams


def batches(ds):
    return [tuple(np.asarray(t) for t in batch) for batch in ds]


def test_runs_with_the_same_data_settings_share_the_arrays_bit_for_bit():
    dataloader._cache.clear()
    hp = hparams.make(dataset="digits", examples_frac=0.5, lr=1e-3,
                      objective="val_loss")
    first = dataloader.load(hp)
    fresh = batches(first.validation), batches(first.test)
    # Another rule, learning rate and batch size: the same arrays, reused.
    again = dataloader.load(hp.replace(algorithm="bp", lr=1e-2,
                                       batch_size=32))
    assert dataloader.prepared(hp) is dataloader.prepared(
        hp.replace(algorithm="bp", lr=1e-2, batch_size=32))
    assert len(dataloader._cache) == 1
    first.set_epoch(3), again.set_epoch(3)
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in batches(first.train)]),
        np.concatenate([x for x, _ in batches(again.train)]))
    # And the same bits as arrays made anew.
    dataloader._cache.clear()
    remade = dataloader.load(hp)
    for old, new in zip(fresh, (batches(remade.validation),
                                batches(remade.test))):
        for (x, y), (x2, y2) in zip(old, new):
            np.testing.assert_array_equal(x, x2)
            np.testing.assert_array_equal(y, y2)


def test_other_data_settings_make_other_arrays():
    dataloader._cache.clear()
    hp = hparams.make(dataset="digits", examples_frac=0.5,
                      objective="val_loss")  # held out: "loss" holds none
    base = dataloader.prepared(hp)
    for change in ({"seed": 1}, {"scaler": "standard"},
                   {"examples_frac": 0.25}, {"objective": "loss"},
                   {"problem_type": "reconstruction"}):
        other = dataloader.prepared(hp.replace(**change))
        assert other is not base, change
    assert not np.array_equal(
        np.asarray(dataloader.prepared(hp.replace(seed=1)).x_train),
        np.asarray(base.x_train))


def test_no_pipeline_runs_the_autotuning_model():
    data = dataloader.load(hparams.make(dataset="digits",
                                        objective="val_loss"))
    for ds in (data.train, data.validation, data.test):
        assert ds.options().autotune.enabled is False
