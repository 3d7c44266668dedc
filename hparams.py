"""Every setting of the framework, declared once.

Edit this file to change a default or to widen a sweep: each `Field` below is
at the same time an absl flag (same name), a key of the `HParams` mapping that
`train.train_and_evaluate` receives, and, when it has a `grid`, a dimension of
the keras-tuner search space.

On the command line a field takes one value (pinned: `hp.Fixed`), a
comma-separated list (its grid for this sweep: `--lr=1e-3,1e-2`) or `all`
(every valid choice: `--algorithm=all`).  Fields not given on the command line
search their `grid` in a sweep and take their `default` in a single run.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import arch
import datasets
import shapes
from runtime.errors import UsageError
from fields import (SEED_LIMIT, Field, arch_string, at_least_one,
                    below_one, fraction, non_negative, positive,
                    seed_in_range, value_text)

# Choices shared with other modules, which TensorFlow-free flag parsing
# cannot import (their registries load TensorFlow): each list is checked
# against its registry in tests/test_hparams.py.
ALGORITHMS = ("bp", "fa", "kp", "usf", "brsf", "frsf", "dfa", "dkp", "fdfa",
              "drtp", "cce", "mse", "fg_w", "fg_a", "pepita", "shallow")
# --algorithm=all: every rule, not the last-layer-only control.
RULES_IN_ALL = tuple(a for a in ALGORITHMS if a != "shallow")
# Sign-concordant feedback draws its magnitudes from a uniform law
# (layers.SIGN_BW_INITS).
SIGN_ALGORITHMS = ("usf", "brsf", "frsf")
SIGN_BW_INITS = ("uniform", "glorot_uniform")
LABEL_ONLY_ALGORITHMS = ("drtp", "cce", "pepita")  # no reconstruction
# A teaching signal at each feedback point (--feedback_points applies).
DIRECT_ALGORITHMS = ("dfa", "dkp", "fdfa", "drtp", "cce", "mse", "fg_a")
# PEPITA's update reads each layer's output and activation: dense and conv
# blocks, nothing between them (forward_rules.Pepita).
PEPITA_BLOCKS = ("dense", "conv")
FEEDBACK_POINTS = ("block", "sublayer")
DATASETS = tuple(datasets.SPECS)  # (declared there, with their shapes)
ACTIVATIONS = ("tanh", "relu", "lrelu", "swish", "sigmoid")
BW_INITS = ("uniform", "orthogonal", "lecun_normal", "glorot_uniform",
            "he_uniform", "zeros")
# The forward weights' initialisation (layers.kernel_initializer).
INITS = ("glorot_uniform", "torch", "he_uniform", "he_normal", "lecun_normal",
         "orthogonal")
# torch.optim's semantics (optimizers.py).
OPTIMIZERS = ("adam", "sgd", "momentum", "nesterov", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine")
SCALERS = ("standard", "zero_one", "normalize", "identity")
AUGMENTS = ("none", "flip", "crop_flip")  # augment.py
SKEW_TYPES = ("none", "long_tailed", "step")
OBJECTIVES = ("loss", "val_loss", "error_rate", "val_error_rate")
PROBLEM_TYPES = ("classification", "reconstruction")
# Keras' dtype policies (model.py): forward and backward passes in 16 bits,
# weights, feedback matrices, losses and optimizer state in float32.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Diagnostics (trackers.py).
TRACKERS = ("bp_cosine", "signal_cosine", "weight_alignment", "norms",
            "local_loss", "histograms")


def _default_archs() -> str:
    """'the dataset's: 256-256 for digits, mnist, ...; dkp_cifar10 for
    ...'."""
    by_arch = {}
    for name, spec in datasets.SPECS.items():
        by_arch.setdefault(spec.default_arch, []).append(name)
    return "the dataset's: " + "; ".join(
        f"{a} for {', '.join(d)}" for a, d in by_arch.items())


FIELDS: tuple[Field, ...] = (
    # What to learn.
    Field("dataset", str, "digits", "Dataset (datasets.SPECS).",
          choices=DATASETS),
    Field("data_dir", str, "", "Folder holding the dataset files (default: "
          f"${datasets.DATA_DIR_ENV}, else Keras' cache, downloading when "
          "absent).", location=True),
    Field("problem_type", str, "classification", "Classify the labels or "
          "reconstruct the input.", choices=PROBLEM_TYPES),
    Field("examples_frac", float, 1.0, "Stratified fraction of the training "
          "split to use.", check=fraction),
    Field("skew_type", str, "none", "Make the training split class-"
          "imbalanced.", choices=SKEW_TYPES, grid=("none",)),
    Field("imbalance_factor", float, 10.0, "Largest over smallest class size "
          "when skewed.", check=at_least_one),
    Field("image_size", int, 0, "Resize the images to N×N pixels in the "
          "input pipeline (bilinear); 0 keeps the dataset's size. "
          "alexnet_cifar100 needs 224, lenet5 32.", check=non_negative),
    # [0, 1] by default, as the published MNIST pipelines of these rules
    # have it: with [-1, 1] the background becomes a constant input of -1
    # and the random-feedback rules learn measurably slower (DFA 256-256,
    # 2 epochs of MNIST: 0.947 against 0.958; FA's published setting: 74 %
    # against 89 % after one epoch).
    Field("scaler", str, "zero_one", "Input scaling: zero_one = [0, 1], "
          "standard = [-1, 1], normalize = per-channel mean 0 and std 1 "
          "with the training split's statistics, identity = raw values.",
          choices=SCALERS),
    Field("augment", str, "none", "Training-set augmentation: flip "
          "(random horizontal flip) or crop_flip (pad 4, random crop, "
          "flip), keyed by (seed, epoch, batch).", choices=AUGMENTS),
    # The network.
    Field("algorithm", str, "dfa", "Training rule (all: every rule but "
          "the control, shallow).", choices=ALGORITHMS, grid=("dfa",),
          every=RULES_IN_ALL),
    Field("arch", str, datasets.SPECS["digits"].default_arch, "Blocks "
          "separated by -, e.g. 500-500, 32C5-P2-64C3-P2-256, "
          "15C5v:bn-40C5v:bn-P2+128:bn (N: dense, NCk[sS][v|pP]: conv, "
          "RN[sS]: residual unit, "
          "Pk[sS]/Ak[sS]: max/average pool, G: global average pool, "
          "X+: pool after the feedback point, :bn :nobn :bias :nobias "
          ":dRATE: block options; arch.py), or a reference network: "
          f"{', '.join(arch.PRESETS)}.", check=arch_string,
          default_text=_default_archs()),
    Field("feedback_points", str, "block", "Where a direct rule's teaching "
          "signals enter a transformer or mixer block: block = at its "
          "output (backprop inside the block), sublayer = after the "
          "attention (token-mixing) sublayer, after the MLP's hidden "
          "activation and at the output, each with its own feedback "
          "matrix, each training only the layers before it since the "
          "previous point (token_blocks.py).", choices=FEEDBACK_POINTS),
    Field("activation", str, "tanh", "Hidden activation.",
          choices=ACTIVATIONS, grid=("tanh",)),
    Field("batch_norm", bool, False, "Batch norm in each block.",
          grid=(False, True)),
    # Keras' convention: moving = m · moving + (1 − m) · batch.  PyTorch's
    # BatchNorm momentum 0.1 is m = 0.9 here; its eps is 1e-5.  0.9, not
    # Keras' 0.99: sweeps are mostly short trials, and a short run's moving
    # statistics keep m^steps of their start (digits, 21 steps an epoch:
    # 81 % after one epoch at 0.99, 11 % at 0.9) and average over 1/(1 − m)
    # steps of weights that move fast early, which costs test accuracy
    # (MNIST 256-256, 1 epoch, 2 seeds: bp 95.66 % against 95.52 %, dfa
    # 94.28 % against 94.08 %; the FDFA recipe's bp at 3 epochs: 97.92 %
    # with PyTorch's constants against 97.38 % with Keras').
    Field("bn_momentum", float, 0.9, "Batch norm's moving-average momentum "
          "m: moving = m·moving + (1 − m)·batch (Keras' convention; "
          "PyTorch's momentum=0.1 is 0.9).  0.9 rather than Keras' 0.99: "
          "the moving statistics of the short trials sweeps are made of "
          "would still hold much of their start and lag the weights.",
          check=below_one),
    Field("bn_epsilon", float, 1e-3, "Batch norm's epsilon (PyTorch: 1e-5).",
          check=positive),
    Field("dropout", float, 0.0, "Dropout rate after each block.",
          grid=(0.0,), check=below_one),
    Field("bw_init", str, "uniform", "Feedback matrix init (uniform = "
          "U(±1/√n)).", choices=BW_INITS, grid=("uniform",)),
    Field("use_bias", bool, True, "Biases in blocks and output layer."),
    Field("init", str, "glorot_uniform", "Forward weights' initialisation "
          "(torch = PyTorch's default for Linear/Conv2d: weights and biases "
          "U(±1/√fan_in)).", choices=INITS),
    # The optimizer (optimizers.py: torch.optim's update rules).
    Field("optimizer", str, "adam", "Optimizer of the forward weights, as "
          "torch.optim: momentum = heavy-ball SGD, nesterov = SGD with "
          "Nesterov momentum.", choices=OPTIMIZERS),
    Field("lr", float, 1e-3, "Learning rate.", grid=(1e-3, 1e-2),
          check=positive),
    Field("momentum", float, 0.9, "Momentum of the momentum and nesterov "
          "optimizers.", check=below_one),
    Field("adam_epsilon", float, 1e-7, "Adam's epsilon (PyTorch: 1e-8).",
          check=positive),
    Field("weight_decay", float, 0.0, "Weight decay λ: added to the "
          "gradient (λW, L2) by sgd, momentum, nesterov and adam; decoupled "
          "(W ← W(1 − lr·λ)) by adamw; as torch.optim.",
          check=non_negative),
    Field("lr_schedule", str, "constant", "Learning rate per epoch: "
          "constant, step (× lr_decay every lr_decay_epochs epochs, as "
          "PyTorch's StepLR) or cosine (to zero over the run).",
          choices=LR_SCHEDULES),
    Field("lr_decay", float, 0.1, "Factor of the step schedule.",
          check=fraction),
    Field("lr_decay_epochs", int, 30, "Epochs between the step schedule's "
          "decays.", check=positive),
    Field("warmup_epochs", int, 0, "Epochs of linear warm-up before the "
          "schedule: epoch e < W trains at lr·(e + 1)/(W + 1).",
          check=non_negative),
    Field("fb_optimizer", str, "adam", "Optimizer of learned feedback "
          "matrices (dkp, fdfa).", choices=OPTIMIZERS),
    Field("fg_directions", int, 1, "Random directions a forward gradient "
          "(fg_w, fg_a) averages per step.", check=positive),
    Field("fb_lr", float, 1e-4, "Learning rate of learned feedback "
          "matrices.", check=positive),
    Field("fb_weight_decay", float, 1e-6, "Weight decay of learned feedback "
          "matrices (dkp, fdfa), entering as --weight_decay's does.",
          check=non_negative),
    Field("fb_lr_decay", float, 0.8, "Per-epoch factor of fb_lr (1: "
          "constant).", check=fraction),
    Field("batch_size", int, 64, "Batch size.", check=positive),
    Field("epochs", int, 10, "Training epochs.", check=positive),
    # The run.
    Field("seed", int, 0, "Seed of data splits, weights and feedback "
          "matrices.", check=seed_in_range),
    Field("objective", str, "val_loss", "What the tuner minimises.",
          choices=OBJECTIVES),
    Field("validation_frac", float, 0.1, "Fraction of training data held "
          "out when the objective needs validation.", check=below_one),
    Field("executions_per_trial", int, 1, "Seeds run per trial.",
          check=positive),
    Field("use_xla", bool, True, "Compile the train step with XLA."),
    Field("precision", str, "float32", "Keras' dtype policy: float32, or "
          "mixed precision (compute in bfloat16 or float16; weights, "
          "feedback matrices, losses and optimizers' state in float32; "
          "mixed_float16 scales the loss dynamically).",
          choices=PRECISIONS),
    Field("steps_per_execution", int, 8, "Train steps per compiled call.",
          check=positive),
    # Diagnostics (trackers.py): logged per epoch to history.csv and
    # TensorBoard; off by default, and free when off.
    Field("tracker", str, "", "Diagnostics to log: repeat the flag "
          "(--tracker=bp_cosine --tracker=norms) or separate by commas.",
          choices=TRACKERS, multiple=True),
    Field("tracker_every", int, 50, "Measure the trackers on one training "
          "step in this many (at least once per epoch).", check=positive),
    Field("histogram_freq", int, 1, "Epochs between activation histograms "
          "(--tracker=histograms).", check=positive),
)

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def check_declarations(fields=None) -> None:
    """Refuses, in one line, a default or grid in this file that the
    command line would refuse (edits are checked like flags)."""
    for field in FIELDS if fields is None else fields:
        problem = field.declaration_problem()
        if problem:
            raise UsageError(f"hparams.py: {problem}")
LOCATION_FIELDS = tuple(f.name for f in FIELDS if f.location)


class HParams(dict):
    """A resolved configuration: one value per field, read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes) -> "HParams":
        unknown = set(changes) - set(FIELDS_BY_NAME)
        if unknown:
            raise UsageError(f"unknown setting(s) {sorted(unknown)}")
        return HParams({**self, **changes})


def defaults() -> HParams:
    return HParams({f.name: f.default for f in FIELDS})


def make(**overrides) -> HParams:
    """Defaults with `overrides`, each checked as a command-line value is."""
    hparams = with_default_arch(defaults().replace(**overrides), overrides)
    for name, value in overrides.items():
        FIELDS_BY_NAME[name].validate(value)
    return check(hparams)


def with_default_arch(hp: HParams, given) -> HParams:
    """`hp` with its dataset's default arch unless `given` names one."""
    if "arch" in given:
        return hp
    return hp.replace(arch=datasets.SPECS[hp["dataset"]].default_arch)


def input_shape(hp: Mapping[str, Any]) -> tuple:
    """The images the model reads: the dataset's, or --image_size's."""
    h, w, c = datasets.SPECS[hp["dataset"]].shape
    size = hp.get("image_size") or 0
    return (size, size, c) if size else (h, w, c)


def check_network(hp: Mapping[str, Any]) -> None:
    """Refuses an arch that shrinks the dataset's images to nothing or
    whose training would not fit in the machine's memory (shapes.py)."""
    if hp["dataset"] not in datasets.SPECS:
        return  # an unknown dataset is refused by its own field
    shape = input_shape(hp)
    target = (datasets.SPECS[hp["dataset"]].classes
              if hp["problem_type"] == "classification" else
              shape[0] * shape[1] * shape[2])
    try:
        shapes.check(hp["arch"], shape, target, hp["batch_size"],
                     hp["batch_norm"], hp["use_bias"])
    except UsageError as error:
        raise UsageError(f"--arch={hp['arch']} on {hp['dataset']} "
                         f"({'×'.join(map(str, shape))}): {error}") from None


def check_sublayer_points(hp) -> None:
    """--feedback_points=sublayer needs a rule with teaching signals and
    a block with sublayers (a transformer or mixer)."""
    if hp["algorithm"] not in DIRECT_ALGORITHMS:
        raise UsageError(
            f"--feedback_points=sublayer: '{hp['algorithm']}' has no "
            "teaching signal to place (valid: --feedback_points=block, or "
            f"--algorithm in {', '.join(DIRECT_ALGORITHMS)})")
    if not any(spec.kind in ("transformer", "mixer")
               for spec in arch.parse(hp["arch"])):
        raise UsageError(
            f"--feedback_points=sublayer: --arch={hp['arch']} has no "
            "transformer or mixer block, so sublayer is block (valid: "
            "--feedback_points=block)")


def resolved_specs(hp):
    """The arch's blocks with their options set (the flags where unset)."""
    return [spec.resolved(hp["batch_norm"], hp["use_bias"], hp["dropout"])
            for spec in arch.parse(hp["arch"])]


def check_pepita(hp) -> None:
    """PEPITA trains dense and conv blocks without norms; dropout only
    where it drops the activations themselves (no pool between)."""
    for spec in resolved_specs(hp):
        if spec.kind not in PEPITA_BLOCKS:
            raise UsageError(f"--algorithm=pepita: '{spec.token}' in "
                             f"--arch={hp['arch']} is a '{spec.kind}' "
                             "block, not a layer and its activation "
                             "(valid: dense and conv blocks, e.g. 1024 or "
                             "32C5-P2-128)")
        if spec.batch_norm or spec.layer_norm:
            raise UsageError(f"--algorithm=pepita: '{spec.token}' has a "
                             "norm layer, which PEPITA's update skips "
                             "(valid: --batch_norm=false, no :bn or :ln)")
        if spec.dropout and spec.post is not None and not spec.post.head:
            raise UsageError(f"--algorithm=pepita: '{spec.token}' drops "
                             "units of its pooled output, not of the "
                             "activations PEPITA compares (valid: dropout "
                             "on blocks without a pool after them)")


def check_fg_a(hp) -> None:
    """fg_a perturbs each example's activity alone: an estimate without
    bias only when the examples do not interact (no batch norm)."""
    for spec in resolved_specs(hp):
        if spec.batch_norm:
            raise UsageError(f"--algorithm=fg_a: '{spec.token}' has batch "
                             "norm, which mixes the examples that fg_a "
                             "perturbs one by one (its estimate would be "
                             "biased; valid: --batch_norm=false, no :bn; "
                             ":ln is per example)")


def check(hparams: Mapping[str, Any]) -> HParams:
    """Refuses combinations of settings that cannot work together."""
    hp = HParams(hparams)
    if hp.problem_type == "reconstruction":
        if hp.algorithm in LABEL_ONLY_ALGORITHMS:
            valid = [a for a in ALGORITHMS if a not in LABEL_ONLY_ALGORITHMS]
            raise UsageError(f"algorithm '{hp.algorithm}' needs labels and "
                             "cannot train reconstruction "
                             f"(valid: {', '.join(valid)})")
        if hp.objective.endswith("error_rate"):
            raise UsageError(f"objective '{hp.objective}' needs labels "
                             "(valid for reconstruction: loss, val_loss)")
        if hp.get("image_size"):
            raise UsageError("--image_size resizes the input only: it "
                             "cannot be used with reconstruction (valid: "
                             "--image_size=0)")
    if hp.get("feedback_points", "block") == "sublayer":
        check_sublayer_points(hp)
    if hp.algorithm in SIGN_ALGORITHMS and hp.bw_init not in SIGN_BW_INITS:
        raise UsageError(f"--bw_init={hp.bw_init}: {hp.algorithm} draws its "
                         "feedback magnitudes from a uniform law (valid: "
                         f"--bw_init in {', '.join(SIGN_BW_INITS)})")
    if hp.algorithm == "pepita":
        check_pepita(hp)
    if hp.algorithm == "fg_a":
        check_fg_a(hp)
    if hp.objective.startswith("val_") and hp.validation_frac <= 0:
        raise UsageError(f"objective '{hp.objective}' needs validation data, "
                         "but --validation_frac=0 holds none out (valid: "
                         "--validation_frac in (0, 1), or --objective="
                         f"{hp.objective[4:]})")
    last_seed = hp.seed + hp.executions_per_trial - 1
    if last_seed >= SEED_LIMIT:
        raise UsageError(f"--seed={hp.seed} with --executions_per_trial="
                         f"{hp.executions_per_trial} runs seed {last_seed} "
                         f"(valid seeds: 0 to {SEED_LIMIT - 1})")
    check_network(hp)
    return hp


def single_run(given: Mapping[str, Sequence]) -> HParams:
    """The configuration of one run: given values over the defaults."""
    check_declarations()
    for name, values in given.items():
        if len(values) != 1:
            raise UsageError(f"--{name}: a single run takes one value, got "
                             f"{len(values)} (use train.bash for a sweep)")
    return check(with_default_arch(defaults().replace(
        **{name: values[0] for name, values in given.items()}), given))
