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

import dataclasses
import math
import os
from typing import Any, Callable, Mapping

import arch
import shapes
from errors import UsageError  # noqa: F401  (re-exported)


# Choices shared with other modules.  The rules' names come from the
# projection registry, but importing it here would pull TensorFlow into flag
# parsing, so they are listed here and checked against the registry in tests.
ALGORITHMS = ("bp", "fa", "kp", "dfa", "dkp", "fdfa", "drtp", "cce", "mse")
LABEL_ONLY_ALGORITHMS = ("drtp", "cce")  # no reconstruction
DATASETS = ("digits", "mnist", "fmnist", "cifar10", "cifar100", "eurosat",
            "caltech256")
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
# Diagnostics (trackers.py); TensorFlow-free here, like ALGORITHMS.
# Keras' dtype policies (model.py): forward and backward passes in 16 bits,
# weights, feedback matrices, losses and optimizer state in float32.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
TRACKERS = ("bp_cosine", "signal_cosine", "weight_alignment", "norms",
            "local_loss", "histograms")

DATA_DIR_ENV = "BPFREE_DATA_DIR"

# Each dataset's images (H, W, C) and classes, as datasets.py loads them:
# known here, without the files, so that an arch is checked against them
# before anything is read or built.
INPUT_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1),
                "fmnist": (28, 28, 1), "cifar10": (32, 32, 3),
                "cifar100": (32, 32, 3), "eurosat": (64, 64, 3),
                "caltech256": (64, 64, 3)}
NUM_CLASSES = {"digits": 10, "mnist": 10, "fmnist": 10, "cifar10": 10,
               "cifar100": 100, "eurosat": 10, "caltech256": 256}


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its type, default, help, valid choices and sweep grid."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    grid: tuple | None = None  # values a sweep searches when not pinned
    check: Callable[[Any], str | None] | None = None  # returns a problem
    # A set of choices (repeatable flag, or commas): always one pinned value,
    # the chosen names joined by commas; never a sweep grid.
    multiple: bool = False
    # Says where things are (a folder), not what is run: not part of a
    # sweep's identity, so the same sweep continues on a machine that mounts
    # the data elsewhere, or with $BPFREE_DATA_DIR in place of the flag.
    location: bool = False
    default_text: str | None = None  # the default as --help says it

    def parse_one(self, text: str) -> Any:
        text = text.strip()
        if self.type is bool:
            low = text.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise UsageError(f"--{self.name}: '{text}' is not a boolean "
                             "(valid: true, false)")
        try:
            value = self.type(text)
        except ValueError:
            raise UsageError(f"--{self.name}: '{text}' is not a valid "
                             f"{self.type.__name__}") from None
        self.validate(value)
        return value

    def parse_set(self, text: str) -> str:
        """A multiple field's names (commas, `all`, `none`) as its value:
        the chosen choices joined by commas, in the order of `choices`."""
        names = {t.strip() for t in str(text).split(",") if t.strip()}
        if "all" in names:
            return ",".join(self.choices)
        names.discard("none")
        for name in sorted(names):
            if name not in self.choices:
                raise UsageError(
                    f"unknown {self.name} '{name}' (valid: "
                    f"{', '.join(self.choices)}, all, none)")
        return ",".join(c for c in self.choices if c in names)

    def validate(self, value: Any) -> None:
        if self.multiple:
            self.parse_set(value)
            return
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"unknown {self.name} '{value}' "
                             f"(valid: {', '.join(map(str, self.choices))})")
        if self.type is float and not math.isfinite(value):
            # (1e400 parses as inf; nan compares false with every bound)
            raise UsageError(f"--{self.name}={value}: must be a finite "
                             "number")
        problem = self.check(value) if self.check else None
        if problem:
            raise UsageError(f"--{self.name}={value}: {problem}")

    def declaration_problem(self) -> str | None:
        """What is wrong with this field as hparams.py declares it (its
        default and its grid, checked as command-line values are), or
        None.  A grid value of another type would reach keras-tuner, whose
        Choice refuses mixed types only once a sweep runs, in 30 lines."""
        values = [("default", self.default)]
        if self.grid is not None:
            if self.multiple:
                return (f"{self.name} is a set of choices, never searched: "
                        "remove its grid=")
            if not self.grid:
                return (f"{self.name}'s grid is empty (give one value or "
                        "more, or remove grid= to use the default)")
            values += [("grid", v) for v in self.grid]
        for where, value in values:
            problem = self._value_problem(value)
            if problem:
                return f"{self.name}'s {where} holds {value!r}: {problem}"
        for value in dict.fromkeys(self.grid or ()):
            if list(self.grid).count(value) > 1:
                return (f"{self.name}'s grid holds {value!r} twice (give "
                        "each value once)")
        return None

    def _value_problem(self, value) -> str | None:
        # bool is an int in Python, not here; an int in a float grid would
        # be a second type (and 1 and 1.0 two sweeps): write 1.0.
        if isinstance(value, bool) != (self.type is bool) or \
                not isinstance(value, self.type):
            kind = type(value).__name__
            return (f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}, but "
                    f"{self.name} takes {self.type.__name__} values"
                    f"{_spelling_hint(value, self.type)}")
        try:
            self.validate(value)
        except UsageError as error:
            return str(error)
        return None

    def parse(self, text: str) -> tuple:
        """Parses a flag's text into the tuple of values it names."""
        if self.multiple:
            return (self.parse_set(text),)
        if text.strip().lower() == "all":
            if self.choices is None and self.type is not bool:
                raise UsageError(f"--{self.name}=all: this field has no list "
                                 "of choices; give values separated by commas")
            return (False, True) if self.type is bool else tuple(self.choices)
        values = tuple(self.parse_one(t) for t in text.split(",") if t.strip())
        if not values:
            raise UsageError(f"--{self.name}: no value given")
        return values


def _positive(value) -> str | None:
    return None if value > 0 else "must be positive"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be zero or positive"


def _fraction(value) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _below_one(value) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _at_least_one(value) -> str | None:
    return None if value >= 1 else "must be at least 1"


SEED_LIMIT = 2 ** 32  # numpy's and Keras' seeds are 32-bit


def _seed(value) -> str | None:
    return None if 0 <= value < SEED_LIMIT else \
        f"must be in [0, {SEED_LIMIT - 1}]"


def _arch(value) -> str | None:
    try:
        arch.parse(value)
    except UsageError as error:
        return str(error)
    return None


def _default_archs() -> str:
    """'the dataset's: 256-256 for digits, mnist, ...; dkp_cifar10 for
    ...'."""
    by_arch = {}
    for dataset in DATASETS:
        by_arch.setdefault(arch.default_for(dataset), []).append(dataset)
    return "the dataset's: " + "; ".join(
        f"{a} for {', '.join(d)}" for a, d in by_arch.items())


FIELDS: tuple[Field, ...] = (
    # What to learn.
    Field("dataset", str, "digits", "Dataset.", choices=DATASETS),
    Field("data_dir", str, "", "Folder holding the dataset files (default: "
          f"${DATA_DIR_ENV}, else Keras' cache, downloading when absent).",
          location=True),
    Field("problem_type", str, "classification", "Classify the labels or "
          "reconstruct the input.", choices=PROBLEM_TYPES),
    Field("examples_frac", float, 1.0, "Stratified fraction of the training "
          "split to use.", check=_fraction),
    Field("skew_type", str, "none", "Make the training split class-"
          "imbalanced.", choices=SKEW_TYPES, grid=("none",)),
    Field("imbalance_factor", float, 10.0, "Largest over smallest class size "
          "when skewed.", check=_at_least_one),
    # [0, 1] by default, as the published MNIST pipelines of these rules
    # have it: with [-1, 1] the background becomes a constant input of -1
    # and the random-feedback rules learn measurably slower (DFA 256-256,
    # 2 epochs of MNIST: 0.947 against 0.958; FA's published setting: 74 %
    # against 89 % after one epoch).
    Field("image_size", int, 0, "Resize the images to N×N pixels in the "
          "input pipeline (bilinear); 0 keeps the dataset's size. "
          "alexnet_cifar100 needs 224, lenet5 32.", check=_non_negative),
    Field("scaler", str, "zero_one", "Input scaling: zero_one = [0, 1], "
          "standard = [-1, 1], normalize = per-channel mean 0 and std 1 "
          "with the training split's statistics, identity = raw values.",
          choices=SCALERS),
    Field("augment", str, "none", "Training-set augmentation: flip "
          "(random horizontal flip) or crop_flip (pad 4, random crop, "
          "flip), keyed by (seed, epoch, batch).", choices=AUGMENTS),
    # The network.
    Field("algorithm", str, "dfa", "Training rule.", choices=ALGORITHMS,
          grid=("dfa",)),
    Field("arch", str, arch.default_for("digits"), "Blocks separated by -, "
          "e.g. 500-500, 32C5-P2-64C3-P2-256, 15C5v:bn-40C5v:bn-P2+128:bn "
          "(N: dense, NCk[sS][v|pP]: conv, RN[sS]: residual unit, "
          "Pk[sS]/Ak[sS]: max/average pool, G: global average pool, "
          "X+: pool after the feedback point, :bn :nobn :bias :nobias "
          ":dRATE: block options; arch.py), or a reference network: "
          f"{', '.join(arch.PRESETS)}.", check=_arch,
          default_text=_default_archs()),
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
          check=_below_one),
    Field("bn_epsilon", float, 1e-3, "Batch norm's epsilon (PyTorch: 1e-5).",
          check=_positive),
    Field("dropout", float, 0.0, "Dropout rate after each block.",
          grid=(0.0,), check=_below_one),
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
          check=_positive),
    Field("momentum", float, 0.9, "Momentum of the momentum and nesterov "
          "optimizers.", check=_below_one),
    Field("adam_epsilon", float, 1e-7, "Adam's epsilon (PyTorch: 1e-8).",
          check=_positive),
    Field("weight_decay", float, 0.0, "Weight decay λ: added to the "
          "gradient (λW, L2) by sgd, momentum, nesterov and adam; decoupled "
          "(W ← W(1 − lr·λ)) by adamw; as torch.optim.",
          check=_non_negative),
    Field("lr_schedule", str, "constant", "Learning rate per epoch: "
          "constant, step (× lr_decay every lr_decay_epochs epochs, as "
          "PyTorch's StepLR) or cosine (to zero over the run).",
          choices=LR_SCHEDULES),
    Field("lr_decay", float, 0.1, "Factor of the step schedule.",
          check=_fraction),
    Field("lr_decay_epochs", int, 30, "Epochs between the step schedule's "
          "decays.", check=_positive),
    Field("warmup_epochs", int, 0, "Epochs of linear warm-up before the "
          "schedule: epoch e < W trains at lr·(e + 1)/(W + 1).",
          check=_non_negative),
    Field("fb_optimizer", str, "adam", "Optimizer of learned feedback "
          "matrices (dkp, fdfa).", choices=OPTIMIZERS),
    Field("fb_lr", float, 1e-4, "Learning rate of learned feedback "
          "matrices.", check=_positive),
    Field("fb_weight_decay", float, 1e-6, "Weight decay of learned feedback "
          "matrices (dkp, fdfa), entering as --weight_decay's does.",
          check=_non_negative),
    Field("fb_lr_decay", float, 0.8, "Per-epoch factor of fb_lr (1: "
          "constant).", check=_fraction),
    Field("batch_size", int, 64, "Batch size.", check=_positive),
    Field("epochs", int, 10, "Training epochs.", check=_positive),
    # The run.
    Field("seed", int, 0, "Seed of data splits, weights and feedback "
          "matrices.", check=_seed),
    Field("objective", str, "val_loss", "What the tuner minimises.",
          choices=OBJECTIVES),
    Field("validation_frac", float, 0.1, "Fraction of training data held "
          "out when the objective needs validation.", check=_below_one),
    Field("executions_per_trial", int, 1, "Seeds run per trial.",
          check=_positive),
    Field("use_xla", bool, True, "Compile the train step with XLA."),
    Field("precision", str, "float32", "Keras' dtype policy: float32, or "
          "mixed precision (compute in bfloat16 or float16; weights, "
          "feedback matrices, losses and optimizers' state in float32; "
          "mixed_float16 scales the loss dynamically).",
          choices=PRECISIONS),
    Field("steps_per_execution", int, 8, "Train steps per compiled call.",
          check=_positive),
    # Diagnostics (trackers.py): logged per epoch to history.csv and
    # TensorBoard; off by default, and free when off.
    Field("tracker", str, "", "Diagnostics to log: repeat the flag "
          "(--tracker=bp_cosine --tracker=norms) or separate by commas.",
          choices=TRACKERS, multiple=True),
    Field("tracker_every", int, 50, "Measure the trackers on one training "
          "step in this many (at least once per epoch).", check=_positive),
    Field("histogram_freq", int, 1, "Epochs between activation histograms "
          "(--tracker=histograms).", check=_positive),
)

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def _spelling_hint(value, wanted: type) -> str:
    """' (write 0.1)' where `value` spells a value of the `wanted` type."""
    if wanted in (float, int) and not isinstance(value, bool):
        try:
            spelt = wanted(value)
        except (TypeError, ValueError):
            return ""
        if isinstance(value, str) or spelt == value:
            return f" (write {spelt!r})"
    return ""


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
    return hp.replace(arch=arch.default_for(hp["dataset"]))


def input_shape(hp: Mapping[str, Any]) -> tuple:
    """The images the model reads: the dataset's, or --image_size's."""
    h, w, c = INPUT_SHAPES[hp["dataset"]]
    size = hp.get("image_size") or 0
    return (size, size, c) if size else (h, w, c)


def check_network(hp: Mapping[str, Any]) -> None:
    """Refuses an arch that shrinks the dataset's images to nothing or
    whose training would not fit in the machine's memory (shapes.py)."""
    if hp["dataset"] not in INPUT_SHAPES:
        return  # an unknown dataset is refused by its own field
    shape = input_shape(hp)
    target = (NUM_CLASSES[hp["dataset"]]
              if hp["problem_type"] == "classification" else
              shape[0] * shape[1] * shape[2])
    try:
        shapes.check(hp["arch"], shape, target, hp["batch_size"],
                     hp["batch_norm"], hp["use_bias"])
    except UsageError as error:
        raise UsageError(f"--arch={hp['arch']} on {hp['dataset']} "
                         f"({'×'.join(map(str, shape))}): {error}") from None


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


def value_text(value) -> str:
    """A setting's value as people write it (1e-10, 0.001, True)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def data_dir(hparams: Mapping[str, Any]) -> str:
    """The data folder: --data_dir, else $BPFREE_DATA_DIR, else ''."""
    return hparams["data_dir"] or os.environ.get(DATA_DIR_ENV, "")
