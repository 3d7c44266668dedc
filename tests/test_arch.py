"""The arch grammar (arch.py), its shape arithmetic (shapes.py) and the
named reference networks: parameter counts worked out by hand, layer
sequences as the references build them, and the refusals of archs that
cannot run."""


import numpy as np
import pytest

import arch
import cli
import hparams
import shapes
import sweep_plan
import train
import tune
from model import ProjectionModel


def built(name_or_arch, input_shape, classes=10, rule="bp", **kw):
    model = ProjectionModel(name_or_arch, rule, classes, "classification",
                            input_shape, **kw)
    model.build()
    return model


def trainable(model):
    """Trainable parameters of the network (KP's B, W's twin, excluded)."""
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables
               if "backward_kernel" not in v.path)


# --- Parameter counts ---------------------------------------------------------

PARAMETERS = {
    # conv1 1·25·15 + 15 = 390, BN 30; conv2 15·25·40 + 40 = 15,040, BN 80;
    # 28 → 24 → 20 → pool 10: 10·10·40 = 4000 inputs; dense 4000·128 + 128
    # = 512,128, BN 256; output 128·10 + 10 = 1290.  Sum 529,214 (issue 12).
    ("fdfa_conv_mnist", (28, 28, 1), 10): 529_214,
    # conv1 3·25·15 + 15 = 1140; 32 → 28 → 24 → 12: 5760 inputs, dense
    # 737,408; the rest as above: 1140 + 30 + 15,040 + 80 + 737,408 + 256
    # + 1290 = 755,244 (issue 12).
    ("fdfa_conv_cifar10", (32, 32, 3), 10): 755_244,
    # conv1 3·9·32 + 32 = 896, BN 64; conv2 32·9·32 + 32 = 9248, BN 64;
    # 32 → 30 → 28 → pool 14: 14·14·32 = 6272 inputs; dense 6272·128 + 128
    # = 802,944 (no BN); output 1290.  Sum 814,506.
    ("dkp_cifar10", (32, 32, 3), 10): 814_506,
    # 224 → conv 11 s4 p2: 55 → P3s2: 27 → conv5 p2: 27 → 13 → 13 → 13 →
    # 13 → P3s2: 6; convs 23,296 + 307,392 + 663,936 + 884,992 + 590,080,
    # BNs 2·(64 + 192 + 384 + 256 + 256) = 2304; dense 9216·4096 + 4096 =
    # 37,752,832 and 4096·4096 + 4096 = 16,781,312, BNs 16,384; output
    # 4096·100 + 100 = 409,700.  Sum 57,432,228 (issue 12).
    ("alexnet_cifar100", (224, 224, 3), 100): 57_432_228,
    # stem 3·9·16 = 432, BN 32; stage 1: 3 units of 2·(16·9·16) + 2·32 =
    # 4672; stage 2: first unit 16·9·32 + 32·9·32 + 2·64 + shortcut 16·32
    # + 64 = 14,528, two of 2·9216 + 128 = 18,560; stage 3: first 18,432 +
    # 36,864 + 256 + 2048 + 128 = 57,728, two of 2·36,864 + 256 = 73,984;
    # output 64·10 + 10 = 650.  464 + 14,016 + 51,648 + 205,696 + 650 =
    # 272,474 (≈ 0.27 M; He et al.'s zero-padding shortcut: 269,722).
    ("resnet20", (32, 32, 3), 10): 272_474,
    # n = 9: 464 + 9·4672 + (14,528 + 8·18,560) + (57,728 + 8·73,984) + 650
    # = 464 + 42,048 + 163,008 + 649,600 + 650 = 855,770 (≈ 0.85 M).
    ("resnet56", (32, 32, 3), 10): 855_770,
    # 32 → 28 → 14 → 10 → 5 → 1: convs 1·25·6 + 6 = 156, 6·25·16 + 16 =
    # 2416, 16·25·120 + 120 = 48,120; dense 120·84 + 84 = 10,164; output
    # 84·10 + 10 = 850.  Sum 61,706.
    ("lenet5", (32, 32, 1), 10): 61_706,
}


@pytest.mark.parametrize("key", PARAMETERS, ids=[k[0] for k in PARAMETERS])
def test_preset_parameter_counts(key):
    name, shape, classes = key
    assert arch.PRESETS[name].input_shape == shape
    ops = shapes.network_ops(name, shape, classes)
    assert shapes.parameter_count(ops) == PARAMETERS[key]
    if name != "alexnet_cifar100":  # 57 M weights: shapes.py's count only
        assert trainable(built(name, shape, classes)) == PARAMETERS[key]


@pytest.mark.parametrize("text,shape", [
    ("2C3-P3s2-4C3s2v-5C2p1-A2-4", (13, 13, 2)),
    ("3C3:nobias-R4s2:bn-R4-G+7:bn:d0.5", (9, 9, 3)),
    ("P2+8C3s2-6", (11, 10, 1)),
])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_shapes_count_what_keras_builds(text, shape, batch_norm):
    model = built(text, shape, batch_norm=batch_norm)
    ops = shapes.network_ops(text, shape, 10, batch_norm=batch_norm)
    assert trainable(model) == shapes.parameter_count(ops)
    x = np.zeros((2, *shape), np.float32)
    hidden, _ = model.forward(x)
    assert [int(np.prod(h.shape[1:])) for h in hidden] == \
        shapes.hidden_sizes(ops)


# --- Layer sequences ----------------------------------------------------------


def layout(model):
    """Per block: (kind, filters or units, kernel, stride, padding, bias,
    batch norm, opening pool, closing pool); residual units as
    ("R", filters, stride, projection shortcut, bias, batch norm, ...)."""
    rows = []
    for block in model.blocks:
        spec = block.spec
        pools = (spec.pre and spec.pre.token, spec.post and spec.post.token)
        if block.unit is not None:
            unit = block.unit
            rows.append(("R", unit.units, unit.conv1.strides[0],
                         unit.shortcut is not None, unit.conv1.use_bias,
                         unit.bn1 is not None, *pools))
            continue
        layer = block.layer
        if spec.kind == "dense":
            rows.append(("dense", layer.units, layer.kernel.shape[0],
                         layer.use_bias, block.norm is not None, *pools))
        else:
            rows.append(("conv", layer.filters, layer.kernel_size[0],
                         layer.strides[0], layer.pad or layer.padding,
                         layer.use_bias, block.norm is not None, *pools))
    return rows


def test_fdfa_conv_mnist_layers():
    # FDFA networks/conv_mnist.py: Conv2d(1, 15, 5, 1) → BN → ReLU → hook;
    # Conv2d(15, 40, 5, 1) → BN → ReLU → hook → max_pool2d(2); Linear(4000,
    # 128) → BN1d → ReLU → hook; Linear(128, 10).
    assert layout(built("fdfa_conv_mnist", (28, 28, 1))) == [
        ("conv", 15, 5, 1, "valid", True, True, None, None),
        ("conv", 40, 5, 1, "valid", True, True, None, None),
        ("dense", 128, 4000, True, True, "P2", None)]


def test_dkp_cifar10_layers():
    # dkp-gist networks/conv.py: Conv2d(3, 32, 3, 1) → BN → ReLU → hook;
    # Conv2d(32, 32, 3, 1) → BN → ReLU → hook → max_pool2d(2);
    # Linear(6272, 128) → ReLU → hook; Linear(128, 10).
    assert layout(built("dkp_cifar10", (32, 32, 3))) == [
        ("conv", 32, 3, 1, "valid", True, True, None, None),
        ("conv", 32, 3, 1, "valid", True, True, None, None),
        ("dense", 128, 6272, True, False, "P2", None)]


def test_alexnet_cifar100_layers():
    # FDFA networks/alexnet_cifar100.py: conv → BN → ReLU → [pool] → hook.
    specs = arch.parse("alexnet_cifar100")
    assert [(s.kind, s.units, s.kernel, s.stride, s.padding, s.batch_norm,
             s.pre, s.post and s.post.token) for s in specs] == [
        ("conv", 64, 11, 4, 2, True, None, "P3s2"),
        ("conv", 192, 5, 1, 2, True, None, "P3s2"),
        ("conv", 384, 3, 1, 1, True, None, None),
        ("conv", 256, 3, 1, 1, True, None, None),
        ("conv", 256, 3, 1, 1, True, None, "P3s2"),
        ("dense", 4096, 0, 1, "same", True, None, None),
        ("dense", 4096, 0, 1, "same", True, None, None)]
    ops = shapes.network_ops("alexnet_cifar100", (224, 224, 3), 100)
    assert [op.shape for op in ops if "pool" in op.what] == [
        (27, 27, 64), (13, 13, 192), (6, 6, 256)]


def test_resnet20_layers():
    # He et al. 2016 §4.2: 3×3 conv (16), then 3 stages of 3 units (16,
    # 32, 64 filters; stride 2 and a projection where a stage begins),
    # global average pooling; convs bias-free with BN.
    rows = layout(built("resnet20", (32, 32, 3)))
    assert rows[0] == ("conv", 16, 3, 1, 1, False, True, None, None)
    assert rows[1:] == [
        ("R", width, 2 if first and width > 16 else 1, first and width > 16,
         False, True, None, "G" if width == 64 and i == 2 else None)
        for width in (16, 32, 64) for i, first in enumerate((1, 0, 0))]
    assert len(built("resnet56", (32, 32, 3)).blocks) == 1 + 27


def test_lenet5_layers():
    # biotorch models/le_net.py LeNetMNIST: Conv2d(1, 6, 5) → ReLU → pool 2
    # → Conv2d(6, 16, 5) → ReLU → pool 2 → Conv2d(16, 120, 5) → ReLU →
    # Linear(120, 84) → ReLU → Linear(84, 10), on 32×32 inputs.
    assert layout(built("lenet5", (32, 32, 1))) == [
        ("conv", 6, 5, 1, "valid", True, False, None, "P2"),
        ("conv", 16, 5, 1, "valid", True, False, None, "P2"),
        ("conv", 120, 5, 1, "valid", True, False, None, None),
        ("dense", 84, 120, True, False, None, None)]


def test_presets_pin_their_options_and_flags_set_the_rest():
    pinned = built("fdfa_conv_mnist", (28, 28, 1), batch_norm=False,
                   dropout=0.5)
    assert trainable(pinned) == 529_214
    assert all(d is None for d in pinned.dropouts)
    free = built("8C3-P2+16:bn:d0.25", (8, 8, 1), batch_norm=True,
                 dropout=0.5, use_bias=False)
    assert layout(free) == [("conv", 8, 3, 1, "same", False, True, None,
                             None),
                            ("dense", 16, 128, False, True, "P2", None)]
    assert [d.rate for d in free.dropouts] == [0.5, 0.25]
    assert arch.reads_flags("resnet20") == set()
    assert arch.reads_flags("8C3:bn-16") == {"batch_norm", "use_bias",
                                             "dropout"}


# --- Grammar ------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("256-x7", "unknown arch token 'x7'"),
    ("32C3q", "unknown arch token '32C3q'"),
    ("128:d1.5", "unknown option ':d1.5'"),
    ("128:bnx", "unknown option ':bnx'"),
    ("P2+P2-8", "'+' must join a pool to a layer token"),
    ("8C3-P2-A2", "at most one per block"),
    ("8C3-G-8C3", "after global average pooling"),
    ("64-P2+8", "reads a flat input"),
    ("8C3s0", "sizes must be at least 1"),
])
def test_bad_arch_strings_are_refused_naming_the_token(text, expected):
    with pytest.raises(hparams.UsageError) as error:
        arch.parse(text)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_no_shell_special_character_or_comma_in_the_grammar():
    forms = arch.valid_forms() + "".join(p.arch for p in
                                         arch.PRESETS.values())
    assert not set("|><()[]*?;&$, ") & set(
        "".join(p.arch for p in arch.PRESETS.values()))
    assert "+" in forms and ":" in forms


def test_explicit_padding_and_same_padding_differ_where_stride_is_two():
    """'same' is TensorFlow's (extra pixel after); p1 is PyTorch's."""
    assert shapes.conv_size(32, 3, 2, "same") == 16
    assert shapes.conv_size(32, 3, 2, 1) == 16
    assert shapes.conv_size(7, 3, 2, "valid") == 3
    assert shapes.conv_size(224, 11, 4, 2) == 55


# --- Refusals before anything runs --------------------------------------------


def run_cli(entry, args, tmp_path, capsys):
    out = tmp_path / "out"
    module = {"train": train, "tune": tune}[entry]
    flag = "--workdir" if entry == "train" else "--sweep_dir"
    status = cli.run([f"{entry}.py", *args, f"{flag}={out}"], module.main,
                     module.FLAGS)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert not out.exists()
    return err[0]


@pytest.mark.parametrize("entry", ["train", "tune"])
def test_an_arch_that_shrinks_the_image_to_nothing_is_refused(
        entry, tmp_path, capsys):
    # digits are 8×8: 8C5v makes 4×4, the second 0×0.  In a sweep, the
    # whole sweep is refused (not every trial FAILED, nor the arch left
    # out of the grid).
    line = run_cli(entry, ["--dataset=digits", "--arch=16,8C5v-8C5v"]
                   if entry == "tune" else
                   ["--dataset=digits", "--arch=8C5v-8C5v"], tmp_path,
                   capsys)
    assert "'8C5v' (block 2)" in line and "0×0 maps from 4×4×8" in line


def test_a_preset_on_the_wrong_image_size_names_its_own(tmp_path, capsys):
    line = run_cli("train", ["--dataset=mnist", "--arch=lenet5"], tmp_path,
                   capsys)
    assert "'120C5v' (block 3)" in line and "--image_size=32" in line
    assert hparams.make(dataset="mnist", arch="lenet5", image_size=32)


@pytest.mark.parametrize("entry", ["train", "tune"])
def test_an_arch_too_large_for_memory_is_refused(entry, tmp_path, capsys,
                                                 monkeypatch):
    monkeypatch.setattr(shapes, "machine_memory", lambda: 64 * 2**30)
    line = run_cli(entry, ["--dataset=mnist", "--arch=100000-100000"],
                   tmp_path, capsys)
    # 784·10⁵ + 10⁵ + 10¹⁰ + 10⁵ + 10⁶ + 10 parameters, 16 bytes each
    assert "10,079,600,010 parameters" in line
    assert "150 GiB" in line and "64 GiB" in line


def test_machine_memory_is_read():
    assert shapes.machine_memory() > 2**30


# --- Defaults per dataset -----------------------------------------------------


def test_colour_datasets_default_to_the_dkp_cnn_and_grey_ones_to_the_mlp():
    for dataset in ("cifar10", "cifar100", "eurosat", "caltech256"):
        assert hparams.make(dataset=dataset).arch == "dkp_cifar10"
        assert sweep_plan.search_space({"dataset": (dataset,)})["arch"] == (
            "dkp_cifar10",)
    for dataset in ("digits", "mnist", "fmnist"):
        assert hparams.make(dataset=dataset).arch == "256-256"
    assert hparams.make(dataset="cifar10", arch="500").arch == "500"
    # A preset pins batch norm: the sweep does not search it for nothing.
    assert sweep_plan.search_space({"dataset": ("cifar10",)})[
        "batch_norm"] == (False,)
    assert sweep_plan.search_space({})["batch_norm"] == (False, True)
    with pytest.raises(hparams.UsageError, match="give --arch"):
        sweep_plan.search_space({"dataset": ("mnist", "cifar10")})
    assert "dkp_cifar10 for cifar10" in hparams.FIELDS_BY_NAME[
        "arch"].default_text


def test_input_shapes_and_classes_are_the_loaders():
    import datasets
    spec = datasets.SPECS["digits"]
    raw = datasets.load_arrays(hparams.make(dataset="digits"))
    assert raw.x_train.shape[1:] == spec.shape
    assert raw.num_classes == spec.classes
    for name, (*_, classes) in datasets.CIFAR.items():
        assert datasets.SPECS[name].classes == classes
        assert datasets.SPECS[name].shape == (32, 32, 3)
    assert datasets.SPECS["caltech256"].shape[:2] == \
        datasets.CALTECH_IMAGE_SIZE


# --- --image_size -------------------------------------------------------------


def test_image_size_resizes_every_split_in_the_pipeline():
    import dataloader
    hp = hparams.make(dataset="digits", image_size=12, batch_size=32,
                      objective="val_loss", examples_frac=0.5)
    data = dataloader.load(hp)
    assert data.input_shape == (12, 12, 1)
    for split in (data.train, data.validation, data.test):
        x, _ = next(iter(split))
        assert x.shape[1:] == (12, 12, 1)
        assert 0 <= float(np.min(x)) and float(np.max(x)) <= 1.0 + 1e-6
    native = dataloader.load(hp.replace(image_size=0))
    big, small = next(iter(data.test))[0], next(iter(native.test))[0]
    # a resize, not a crop or a pad: the image's mean is kept
    np.testing.assert_allclose(np.mean(big, axis=(1, 2)),
                               np.mean(small, axis=(1, 2)), atol=0.02)
    # the arch is checked against the resized image
    assert hparams.make(dataset="digits", arch="8C5v-8C5v", image_size=12)
    with pytest.raises(hparams.UsageError, match="reconstruction"):
        hparams.make(dataset="digits", image_size=12,
                     problem_type="reconstruction", algorithm="mse",
                     objective="loss")


def test_arch_grammar():
    blocks = arch.parse("32C5-P2-64C3-P2-256")
    assert [(b.kind, b.units, b.kernel, b.post and b.post.token)
            for b in blocks] == [
        ("conv", 32, 5, "P2"), ("conv", 64, 3, "P2"), ("dense", 256, 0, None)]
    assert [(b.stride, b.padding, b.pre) for b in blocks] == [
        (1, "same", None)] * 3
    with pytest.raises(hparams.UsageError):
        arch.parse("32C5-P2-P2")
