"""Bad input: one line naming the problem (and the valid choices), exit
status 2, nothing written."""

import os
import subprocess
import sys

import pytest

import cli
import hparams
import train
import tune
from conftest import ROOT

BAD_INPUTS = {
    "unknown dataset": (["--dataset=imagenet"], "valid: digits, mnist"),
    "unknown rule": (["--algorithm=hebb"], "valid: bp, fa, kp"),
    "unknown activation": (["--activation=gelu"], "valid: tanh, relu"),
    "unknown arch token": (["--arch=256-x7"], "valid tokens"),
    "malformed arch": (["--arch=256--256"], "valid tokens"),
    "conv after dense": (["--arch=256-32C5"], "conv blocks come first"),
    "pool without conv": (["--arch=P2-256"], "must follow a conv"),
    "unknown block option": (["--arch=128:d2"], "valid options: :bn"),
    "image shrinks to nothing": (["--arch=8C5v-8C5v"], "would make 0×0"),
    "missing data file": (["--dataset=mnist", "--data_dir={empty}"],
                          "mnist.npz' not found"),
    "drtp reconstruction": (["--algorithm=drtp",
                             "--problem_type=reconstruction"],
                            "valid: bp, fa, kp, dfa"),
    "examples_frac zero": (["--examples_frac=0"], "must be in (0, 1]"),
    "examples_frac above one": (["--examples_frac=1.5"], "must be in (0, 1]"),
    "negative epochs": (["--epochs=-1"], "must be positive"),
    "negative batch size": (["--batch_size=-8"], "must be positive"),
    "negative learning rate": (["--lr=-0.1"], "must be positive"),
    "not a number": (["--lr=fast"], "not a valid float"),
    "unknown flag": (["--learning_rate=1"], "Unknown command line flag"),
    "list in a single run": (["--lr=1e-3,1e-2"], "single run takes one"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("entry", ["train", "tune"])
def test_bad_input_is_one_line_and_writes_nothing(case, entry, tmp_path,
                                                  capsys):
    args, expected = BAD_INPUTS[case]
    if entry == "tune" and case == "list in a single run":
        pytest.skip("a sweep takes lists")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    args = [a.format(empty=empty) for a in args]
    if entry == "train":
        status = cli.run(["train.py", *args, f"--workdir={out}"], train.main,
                         train.FLAGS)
    else:
        status = cli.run(["tune.py", *args, f"--sweep_dir={out}"], tune.main,
                         tune.FLAGS)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0]
    assert not out.exists()


def test_real_command_prints_one_line(tmp_path):
    """The same through a real process: nothing else reaches stderr."""
    result = subprocess.run(
        [sys.executable, "train.py", "--dataset=digits", "--arch=256-abc",
         f"--workdir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True,
        text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --arch=256-abc: unknown arch token 'abc' in '256-abc' "
        "(valid tokens: N (dense), NCk[sS][v|pP] (conv), RN[sS] (residual "
        "unit), Pk[sS] (max pool), Ak[sS] (average pool), G (global "
        "average pool); X+ before a token opens its block with pool X; "
        "options :bn :nobn :bias :nobias :dRATE; presets fdfa_conv_mnist, "
        "fdfa_conv_cifar10, dkp_cifar10, alexnet_cifar100, resnet20, "
        "resnet56, lenet5)"]
    assert not (tmp_path / "out").exists()


def test_flags_and_tuner_names_are_the_fields():
    flag_values = cli.make_flags({})
    for field in hparams.FIELDS:
        assert field.name in flag_values


def test_flag_values_pin_list_or_search_all():
    flag_values = cli.make_flags({})
    flag_values(["prog", "--lr=1e-3,1e-2", "--algorithm=all",
                 "--nobatch_norm", "--arch=16C5-P2-64"])
    given = hparams.given_on_command_line(flag_values)
    assert given["lr"] == (1e-3, 1e-2)
    assert given["algorithm"] == hparams.ALGORITHMS
    assert given["batch_norm"] == (False,)
    space = hparams.search_space(given)
    assert space["arch"] == ("16C5-P2-64",)
    assert space["activation"] == hparams.FIELDS_BY_NAME["activation"].grid
    assert space["seed"] == (0,)  # no grid: the default alone


def test_label_only_rules_match_the_registry():
    import projection
    assert set(hparams.LABEL_ONLY_ALGORITHMS) == {
        key for key, rule in projection.RULES.items()
        if not rule.supports_reconstruction}


def test_arch_grammar():
    import arch
    blocks = arch.parse("32C5-P2-64C3-P2-256")
    assert [(b.kind, b.units, b.kernel, b.post and b.post.token)
            for b in blocks] == [
        ("conv", 32, 5, "P2"), ("conv", 64, 3, "P2"), ("dense", 256, 0, None)]
    assert [(b.stride, b.padding, b.pre) for b in blocks] == [
        (1, "same", None)] * 3
    with pytest.raises(hparams.UsageError):
        arch.parse("32C5-P2-P2")
    assert os.path.exists(os.path.join(ROOT, "arch.py"))
