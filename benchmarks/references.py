"""Published setups, expressed as hparams, and their reference numbers.

Each recipe is the setting of a reference implementation, field by field,
with the reason for every value that is not the framework's default; the
README's "Reproducing published setups" gives the same as command lines
(`flags`).  benchmarks/accuracy.py runs them and compares.
"""

from __future__ import annotations

# Feedback alignment in a published setting (issue 6): MNIST test accuracy
# in % after epochs 1, 5 and 10.  Inputs in [0, 1]: with [-1, 1] the
# background is a constant input of -1 on ~80 % of the pixels, and FA's
# early, unaligned updates then move every ReLU unit at once (74 % instead
# of 89 % after one epoch).
PUBLISHED_FA = {1: 88.4, 5: 94.1, 10: 95.9}
# The project's shared dense setting (every rule, MNIST and Fashion-MNIST).
SHARED_SETTING = dict(arch="256-256", activation="tanh", optimizer="adam",
                      lr=1e-3, batch_size=64, epochs=3, scaler="zero_one")
FA_SETTING = dict(dataset="mnist", algorithm="fa", arch="128-64",
                  activation="relu", optimizer="adam", lr=3e-4,
                  batch_size=64, epochs=10, scaler="zero_one")

# Bacho & Chu's FDFA reference (github.com/Florian-BACHO/FDFA), MNIST, its
# fully connected network with two hidden layers (networks/fc_mnist.py):
# Linear(800) → BatchNorm1d → ReLU → [feedback], twice, then Linear(10).
FDFA_MNIST = dict(
    dataset="mnist", arch="800-800", activation="relu",
    batch_norm=True,            # before the ReLU, as fc_mnist.py
    bn_momentum=0.9,            # PyTorch's BatchNorm momentum 0.1
    bn_epsilon=1e-5,            # PyTorch's BatchNorm eps
    init="torch",               # nn.Linear's default initialisation
    optimizer="adam", lr=1e-4,  # main.py: optim.Adam(lr=1e-4)
    adam_epsilon=1e-8,          # PyTorch's Adam eps
    weight_decay=0.0,           # main.py's default
    lr_schedule="step", lr_decay=0.95, lr_decay_epochs=1,  # StepLR(1, 0.95)
    batch_size=64,
    scaler="standard",          # Normalize(0.5, 0.5): inputs in [-1, 1]
    objective="loss",           # all 60,000 training images, no hold-out
    validation_frac=0.0,
    epochs=3,
)
# Per rule: DFA's B kaiming_uniform_ (he_uniform over n_l); DKP's and FDFA's
# B from zeros, trained by their own Adam (lr 1e-4, main.py's default
# feedback decay 0, no schedule: StepLR is on the forward optimizer only).
LEARNED_FROM_ZEROS = dict(bw_init="zeros", fb_optimizer="adam", fb_lr=1e-4,
                          fb_weight_decay=0.0, fb_lr_decay=1.0)
FDFA_MNIST_RULES = {"bp": {}, "dfa": dict(bw_init="he_uniform"),
                    "dkp": LEARNED_FROM_ZEROS, "fdfa": LEARNED_FROM_ZEROS}
# Test accuracy in % after 3 epochs, mean over seeds 0-2, from running the
# reference's own code on a machine like ours (issue 11).
FDFA_MNIST_REFERENCE = {"bp": 98.02, "dfa": 97.49, "dkp": 97.64,
                        "fdfa": 97.93}
FDFA_MNIST_TOLERANCE = 0.25  # points below the reference mean


# The same recipe on the reference's MNIST CNN (networks/conv_mnist.py,
# the `fdfa_conv_mnist` preset: its batch norm is part of the preset), one
# epoch, for all nine rules.  Rules the reference does not have take its
# DFA's fixed B (kaiming-uniform) for theirs (fa, kp: B of W's shape).
FDFA_CONV_MNIST = {**FDFA_MNIST, "arch": "fdfa_conv_mnist", "epochs": 1}
del FDFA_CONV_MNIST["batch_norm"]  # pinned by the preset
FIXED_FROM_HE_UNIFORM = dict(bw_init="he_uniform")
# Sign-concordant magnitudes come from a uniform law: biotorch's xavier.
SIGN_FROM_GLOROT = dict(bw_init="glorot_uniform")


# Every rule on a three-block ViT and MLP-Mixer (issue 21).  Nakajima et al.
# 2022 (Nature Communications, Table 2) report MNIST test accuracy in %
# for backprop, DFA and the last layer alone on their ViT-3 and Mixer-3,
# whose sizes and recipe the paper does not give: the presets and the
# recipe here are this framework's (Adam 1e-3 annealed by a cosine, 10
# epochs, batch 64), so their numbers are context, not a bar.
NAKAJIMA_MNIST = {"vit_mnist": {"bp": 98.23, "dfa": 98.04, "shallow": 47.6},
                  "mixer_mnist": {"bp": 98.90, "dfa": 98.36,
                                  "shallow": 92.85}}
TOKEN_SETTING = dict(dataset="mnist", optimizer="adam", lr=1e-3,
                     lr_schedule="cosine", batch_size=64, epochs=10,
                     batch_norm=False)


def fdfa_mnist(rule: str) -> dict:
    """The FDFA reference's MNIST setting for one rule."""
    return {**FDFA_MNIST, **FDFA_MNIST_RULES.get(rule, {}),
            "algorithm": rule}


def fdfa_conv_mnist(rule: str) -> dict:
    """The FDFA recipe on its MNIST CNN for one rule."""
    learned = rule in ("dkp", "fdfa")
    fixed = (SIGN_FROM_GLOROT if rule in ("usf", "brsf", "frsf")
             else FIXED_FROM_HE_UNIFORM)
    return {**FDFA_CONV_MNIST, **(LEARNED_FROM_ZEROS if learned else fixed),
            "algorithm": rule}


def flags(setting: dict) -> list[str]:
    """The command-line flags of a setting, in its order."""
    out = []
    for name, value in setting.items():
        if isinstance(value, bool):
            out.append(f"--{name}" if value else f"--no{name}")
        else:
            out.append(f"--{name}={value}")
    return out
