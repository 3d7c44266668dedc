"""Training rules as projections of a block's output into target space.

Every rule gives hidden block l a local loss ℓ_l whose gradient with respect
to the block's own parameters is the rule's update
(../shared/design/algorithms.md).  Most local losses score the projection
p_l = flatten(h_l) B_l (B_l: n_l × C, C = classes, or input features for
reconstruction) against a target-space signal.

Conventions, the same for every rule:
- e = ∂L/∂z is the global error at the logits; L is a batch mean, so e and
  every teaching signal carry 1/N, and SGD step sizes mean the same thing
  for every rule.  Squared errors are means over the batch *and* the
  features: the reconstruction loss (D input features) gives e a factor
  1/(N·D), and the `mse` local loss (C targets: classes, or D) gives δ_l
  1/(N·C), not 1/N.
- The teaching signal δ_l = ∂ℓ_l/∂h_l is injected at the block's output
  *before* dropout; autodiff then applies the block's own activation
  derivative, batch-norm Jacobian and pooling, and stops at its input
  (the model differentiates h_l only with respect to block l's variables,
  so no signal crosses from block to block).
- The output layer always gets the true gradient of L.
- Every B is a seeded Keras weight saved with the model.  Fixed B are
  non-trainable; learned B (dkp, fdfa) are non-trainable too and are moved
  only by their rule's `feedback_gradient`, through the model's feedback
  optimizer.  FA/KP keep their B inside the dense/conv layers (layers.py).

A rule is one subclass registered in `RULES` under its `--algorithm` key;
nothing else in the framework knows rules by name.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from forward_mode import TangentProbe
from layers import PACKAGE, feedback_initializer

RULES: dict[str, type["Projection"]] = {}


def register(key: str):
    def add(cls):
        cls.key = key
        cls.direct = (not cls.chained and cls.trains_hidden
                      and not cls.steps_itself)
        RULES[key] = keras.saving.register_keras_serializable(PACKAGE)(cls)
        return cls
    return add


def get(key: str) -> type["Projection"]:
    from runtime.errors import UsageError
    if key not in RULES:
        raise UsageError(f"unknown algorithm '{key}' "
                         f"(valid: {', '.join(RULES)})")
    return RULES[key]


class Projection(keras.layers.Layer):
    """Base class: hidden block l's feedback matrix B_l and local loss.

    Class attributes say how the model trains with the rule:
      chained          errors flow block to block through the layers (bp,
                       fa, kp); such rules have no per-block projection.
      direct           (derived) each feedback point has a projection and
                       a local loss: the DFA family (neither chained nor
                       direct: shallow).
      trains_hidden    False: the hidden blocks keep their initial
                       weights, only the output layer learns (shallow).
      kernel_feedback  None, "fixed", "learned" or a sign-concordant kind
                       (layers.SIGN_FEEDBACK): dense/conv layers send
                       their error back through B in place of W (fa, kp,
                       usf, brsf, frsf).
      learns_feedback  B_l has an update of its own (dkp, fdfa).
      supports_reconstruction  False for rules that need labels.
      projects         False: a direct rule without B (fg_a).
      steps_itself     the rule computes its whole step (`own_step`:
                       fg_w, pepita; forward_rules.py).
      modulates_input  one projection, F (input × classes), not one per
                       feedback point (pepita).
    """

    key = "base"
    chained = False
    direct = True
    trains_hidden = True
    kernel_feedback = None
    learns_feedback = False
    supports_reconstruction = True
    projects = True
    steps_itself = False
    modulates_input = False

    def __init__(self, target_dim, bw_init="uniform", seed=0,
                 output_fn="softmax", **kw):
        super().__init__(**kw)
        self.target_dim, self.bw_init, self.seed = target_dim, bw_init, seed
        self.output_fn = output_fn

    def build(self, h_shape):
        n = 1
        for d in h_shape[1:]:
            n *= d
        self.feedback = self.add_weight(
            name="feedback", shape=(n, self.target_dim),
            initializer=self._feedback_initializer(n), trainable=False)

    def _feedback_initializer(self, n):
        return feedback_initializer(self.bw_init, self.seed, n)

    def call(self, h):
        """p_l = flatten(h_l) B_l."""
        return tf.matmul(tf.reshape(h, (tf.shape(h)[0], -1)), self.feedback)

    def local_loss(self, p, error, target):
        """ℓ_l given p_l, e = ∂L/∂z and the target (one-hot y or x)."""
        raise NotImplementedError

    def teach(self, h, error, target, tangents=None):
        """(δ_l = ∂ℓ_l/∂h_l, ℓ_l, gradient for B_l or None), all float32:
        under a mixed precision h_l is cast up before it is projected
        (the identity under float32)."""
        h = tf.cast(h, tf.float32)
        with tf.GradientTape(persistent=self.learns_feedback) as tape:
            tape.watch(h)
            if self.learns_feedback:
                tape.watch(self.feedback.value)
            p = self(h)
            loss = self.local_loss(p, error, target)
        signal = tape.gradient(loss, h)
        return signal, loss, self.feedback_gradient(tape, loss, h, tangents)

    def feedback_gradient(self, tape, loss, h, tangents):
        return None

    @classmethod
    def tangent_probe(cls, seed_generator, directions=1):
        """A forward-mode probe of the network (fdfa, fg_a), or None."""
        return None

    @classmethod
    def own_step(cls, model, x, target, scale):
        """The step.Step of a rule that `steps_itself` (its gradients
        aligned with `model.forward_variables`, × `scale` when given)."""
        raise NotImplementedError

    @classmethod
    def warnings(cls, hparams) -> list[str]:
        """Settings the rule accepts but that likely defeat it."""
        return []

    def get_config(self):
        return {**super().get_config(), "target_dim": self.target_dim,
                "bw_init": self.bw_init, "seed": self.seed,
                "output_fn": self.output_fn}


# --- Chained rules: no projection, the layers carry the rule. --------------


@register("bp")
class Backprop(Projection):
    """Backpropagation (Rumelhart 1986): ΔW_l = −η ∂L/∂W_l, end to end."""

    chained = True


@register("fa")
class FeedbackAlignment(Projection):
    """Feedback alignment (Lillicrap 2016): δ_{l-1} = (δ_l Bᵀ) ⊙ f', B fixed
    random of W's shape; ΔW = −η xᵀ δ."""

    chained = True
    kernel_feedback = "fixed"


@register("kp")
class KolenPollack(Projection):
    """Kolen-Pollack (Akrout 2019): as FA, but B gets W's update and decay,
    ΔB = ΔW, so W − B shrinks by (1 − η λ) per step."""

    chained = True
    kernel_feedback = "learned"

    @classmethod
    def warnings(cls, hparams):
        if hparams["weight_decay"] <= 0:
            return ["kp without weight decay: W − B keeps its initial "
                    "value, so B approaches W only as far as W outgrows "
                    "its initialisation (--weight_decay=λ > 0 shrinks "
                    "W − B by lr·λ per step under sgd and adamw)"]
        return []


@register("usf")
class UniformSignFeedback(FeedbackAlignment):
    """Uniform sign-concordant feedback (Liao, Leibo & Poggio 2016): FA
    with B = s·sign(W) from the current W at every step, s the standard
    deviation of --bw_init's draws (biotorch's scale; layers.py)."""

    kernel_feedback = "usf"


@register("brsf")
class BatchRandomSignFeedback(FeedbackAlignment):
    """Batchwise random-magnitude sign-concordant feedback (Moskovitz et
    al. 2018; biotorch's brsf): FA with B = |R| ∘ sign(W), R ~ U(−a, a)
    (--bw_init's law) drawn anew for every batch."""

    kernel_feedback = "brsf"


@register("frsf")
class FixedRandomSignFeedback(FeedbackAlignment):
    """Fixed random-magnitude sign-concordant feedback (Moskovitz et al.
    2018; biotorch's frsf): FA with B = |R| ∘ sign(W), R ~ U(−a, a) drawn
    once and kept; only the signs follow W."""

    kernel_feedback = "frsf"


# --- Direct rules: a projection per hidden block. ---------------------------


@register("dfa")
class DirectFeedbackAlignment(Projection):
    """Direct feedback alignment (Nøkland 2016): δ_l = e B_lᵀ,
    ℓ_l = Σ p_l ⊙ sg(e), B fixed random."""

    def local_loss(self, p, error, target):
        return tf.reduce_sum(p * tf.stop_gradient(error))


@register("dkp")
class DirectKolenPollack(DirectFeedbackAlignment):
    """Direct Kolen-Pollack (Webster 2021): as DFA, and B_l descends the same
    ℓ_l: ΔB_l = −η_B h_lᵀ e (own optimizer, lr and decay)."""

    learns_feedback = True

    def feedback_gradient(self, tape, loss, h, tangents):
        return tape.gradient(loss, self.feedback.value)


@register("fdfa")
class ForwardDirectFeedbackAlignment(DirectFeedbackAlignment):
    """Forward DFA (Bacho & Chu 2024): as DFA, B_l starts at 0 and moves
    toward ĝ_l = mean_n u_l ⊗ (Σ_k J_k u_k), a forward-mode estimate of
    (∂z/∂h_l)ᵀ: the gradient fed to the feedback optimizer is B_l − ĝ_l
    (plain SGD with lr β gives the EMA B ← B − β(B − ĝ))."""

    learns_feedback = True

    def _feedback_initializer(self, n):
        return keras.initializers.Zeros()

    def feedback_gradient(self, tape, loss, h, tangents):
        direction, output_tangent = tangents
        n = tf.shape(h)[0]
        u = tf.cast(tf.reshape(direction, (n, -1)), tf.float32)
        estimate = tf.matmul(u, output_tangent, transpose_a=True)
        return self.feedback - estimate / tf.cast(n, u.dtype)

    @classmethod
    def tangent_probe(cls, seed_generator, directions=1):
        return TangentProbe(seed_generator)


@register("drtp")
class DirectRandomTargetProjection(Projection):
    """Direct random target projection (Frenkel 2021): δ_l = −(y/N) B_lᵀ,
    ℓ_l = Σ p_l ⊙ (−y/N); no error term, so labels only."""

    supports_reconstruction = False
    UNBOUNDED = ("relu", "lrelu", "swish")

    def local_loss(self, p, error, target):
        n = tf.cast(tf.shape(p)[0], p.dtype)
        return tf.reduce_sum(p * (-target / n))

    @classmethod
    def warnings(cls, hparams):
        if hparams["activation"] in cls.UNBOUNDED:
            return [f"drtp with the unbounded activation "
                    f"'{hparams['activation']}' tends to diverge (its update "
                    "never vanishes); tanh or sigmoid are safer"]
        return []


@register("cce")
class LocalCrossEntropy(Projection):
    """Local errors (Mostafa 2018): ℓ_l = mean CE(y, softmax(p_l)),
    δ_l = (softmax(p_l) − y)/N B_lᵀ, B fixed random."""

    supports_reconstruction = False

    def local_loss(self, p, error, target):
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
            labels=target, logits=p))


@register("mse")
class LocalSquaredError(Projection):
    """Local squared error (ℓ_l = mean MSE(target, g(p_l))): the mean over
    the N examples *and* the C targets of (target − g(p_l))², so δ_l
    carries 1/(N·C); g is the output function (softmax for labels,
    tanh/sigmoid/identity for inputs)."""

    def local_loss(self, p, error, target):
        return tf.reduce_mean(tf.square(target - output_function(
            self.output_fn)(p)))


# The rules that learn from forward passes alone (fg_w, fg_a, pepita),
# registered here so that the registry lists them before the control.
import forward_rules  # noqa: E402,F401


# --- No rule for the hidden blocks: the control. -----------------------------


@register("shallow")
class Shallow(Projection):
    """Last layer only (the control of Launay et al. 2020 and Nakajima et
    al. 2022): the output layer gets L's true gradient, every hidden block
    keeps its initial weights (a random feature map)."""

    trains_hidden = False


def output_function(name: str):
    """The output nonlinearity g applied to logits."""
    return {"softmax": tf.nn.softmax, "tanh": tf.nn.tanh,
            "sigmoid": tf.nn.sigmoid, "linear": tf.identity}[name]
