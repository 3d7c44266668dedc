"""The one model every rule trains through.

`train_step` knows no rule by name.  It runs the forward pass under a tape
(and, for rules that ask, a forward-mode probe), then either differentiates
the loss end to end (chained rules: bp, fa, kp — the layers carry FA/KP's
feedback) or asks each hidden block's projection for its teaching signal
and differentiates each block's output with respect to that block's own
variables only.  Learned feedback matrices get their gradients from their
projection and are applied by a separate feedback optimizer.

Precision (`--precision`): the blocks and the output layer take Keras'
dtype policy (float32, mixed_bfloat16 or mixed_float16), so the forward
and backward passes run in the compute dtype while every variable stays
float32.  What a rule derives its signals from is float32 whatever the
policy: the logits are cast to float32 before the global loss (so e is
float32), and projections, local losses, δ_l and the feedback gradients
are computed from float32 casts of h_l.  Under mixed_float16 the forward
optimizer is Keras' LossScaleOptimizer: S (its dynamic scale) multiplies
what enters the 16-bit backward pass (chained rules: the loss; direct
rules: each δ_l and e) and the optimizer divides it out; the feedback
gradients are float32 and unscaled.  A step with any non-finite gradient
moves nothing and halves S (`_apply_loss_scaled`).  Under float32 every
cast is the identity and the step is the one without this paragraph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import keras
import tensorflow as tf

import optimizers  # noqa: F401  (registers what a saved model's optimizers are)
import projection
import shapes
from blocks import blocks_from_arch
from layers import PACKAGE, make_linear

OUTPUT_FUNCTION_OF_SCALER = {"standard": "tanh", "zero_one": "sigmoid",
                             "normalize": "linear", "identity": "linear"}


@dataclasses.dataclass
class Step:
    """What one training step computed."""

    grads: list  # aligned with ProjectionModel.forward_variables, × S
    feedback_grads: list  # aligned with ProjectionModel.learned_feedback
    loss: tf.Tensor  # float32, unscaled
    target: tf.Tensor
    z: tf.Tensor  # the logits, float32
    hidden: list  # in the compute dtype
    # mixed_float16: the loss scale S that `grads` carry; else None.
    loss_scale: tf.Tensor | None = None
    # Direct rules: what Projection.teach gave each hidden block, δ_l and
    # ℓ_l (float32, unscaled); the trackers read them (chained rules: []).
    signals: list = dataclasses.field(default_factory=list)
    local_losses: list = dataclasses.field(default_factory=list)


def error_rate(y_true, y_pred):
    return 1.0 - keras.metrics.categorical_accuracy(y_true, y_pred)


@keras.saving.register_keras_serializable(PACKAGE)
class ProjectionModel(keras.Model):
    """Blocks from an arch string, an output layer, and a training rule."""

    def __init__(self, arch, algorithm, target_dim, problem_type, input_shape,
                 activation="tanh", batch_norm=False, dropout=0.0,
                 bw_init="uniform", use_bias=True, scaler="zero_one", seed=0,
                 init="glorot_uniform", bn_momentum=0.9, bn_epsilon=1e-3,
                 precision="float32", **kw):
        # --precision is a Keras dtype policy, given to every block and
        # layer below (not set globally: a sweep runs trials of several
        # precisions in one process).  A saved config has it twice (the
        # spec's precision, Keras' dtype); the precision wins.
        kw["dtype"] = precision
        super().__init__(**kw)
        policy = self.dtype_policy
        self.spec = dict(arch=arch, algorithm=algorithm,
                         target_dim=target_dim, problem_type=problem_type,
                         input_shape=tuple(input_shape), activation=activation,
                         batch_norm=batch_norm, dropout=dropout,
                         bw_init=bw_init, use_bias=use_bias, scaler=scaler,
                         seed=seed, init=init, bn_momentum=bn_momentum,
                         bn_epsilon=bn_epsilon, precision=precision)
        self.rule = projection.get(algorithm)
        self.classify = problem_type == "classification"
        self.output_fn = ("softmax" if self.classify
                          else OUTPUT_FUNCTION_OF_SCALER[scaler])
        # Refuses an arch that shrinks this input to nothing (one line).
        shapes.network_ops(arch, input_shape, target_dim, batch_norm,
                           use_bias)
        self.blocks = blocks_from_arch(
            arch, activation=activation, batch_norm=batch_norm,
            use_bias=use_bias, dropout=dropout,
            kernel_feedback=self.rule.kernel_feedback, bw_init=bw_init,
            seed=seed, init=init, bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon, dtype=policy)
        self.dropouts = [keras.layers.Dropout(block.dropout, seed=seed + i,
                                              dtype=policy)
                         if block.dropout else None
                         for i, block in enumerate(self.blocks)]
        self.output_layer = make_linear(
            "dense", target_dim, use_bias=use_bias,
            kernel_feedback=self.rule.kernel_feedback, bw_init=bw_init,
            seed=seed * 1000 + 999, init=init, dtype=policy)
        # p = h B and the local losses: float32 under every policy.
        self.projections = [] if self.rule.chained else [
            self.rule(target_dim, bw_init, seed * 1000 + 500 + i,
                      self.output_fn, name=f"projection{i + 1}",
                      dtype="float32")
            for i in range(len(self.blocks))]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.feedback_optimizer = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.extra_metrics = ([
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.MeanMetricWrapper(error_rate, name="error_rate")]
            if self.classify else [])
        # Diagnostics (trackers.py): a trackers.Trackers, or None.  Read when
        # a step is traced, so None adds no op and no metric to the step.
        self.diagnostics = None

    # --- Building and saving ------------------------------------------------

    def build(self, input_shape=None):
        if self.built:
            return
        shape = (None, *self.spec["input_shape"])
        for block, proj in zip(self.blocks, self.projections or
                               [None] * len(self.blocks)):
            block.build(shape)
            shape = block.compute_output_shape(shape)
            if proj is not None:
                proj.build(shape)
        self.output_layer.build((None, math.prod(shape[1:])))
        self.built = True

    def get_config(self):
        return {**super().get_config(), **self.spec}

    def compile(self, optimizer, feedback_optimizer=None, **kw):
        super().compile(optimizer=optimizer, **kw)
        self.feedback_optimizer = feedback_optimizer
        self._compile_kw = kw
        for block in self.blocks:  # max pooling that is fast under XLA
            block.reshape_pool = bool(self.jit_compile)

    def get_compile_config(self):
        if not self.compiled:
            return None
        return {"optimizer": keras.optimizers.serialize(self.optimizer),
                "feedback_optimizer": (
                    keras.optimizers.serialize(self.feedback_optimizer)
                    if self.feedback_optimizer is not None else None),
                **self._compile_kw}

    def compile_from_config(self, config):
        config = dict(config)
        feedback = config.pop("feedback_optimizer")
        self.compile(
            optimizer=keras.optimizers.deserialize(config.pop("optimizer")),
            feedback_optimizer=(keras.optimizers.deserialize(feedback)
                                if feedback is not None else None),
            **config)
        # Build the optimizers now so that their saved state (moments,
        # step counts) is restored into them.
        self.build_optimizers()

    def build_optimizers(self):
        """Creates the optimizers' slots (before loading saved state)."""
        if not self.optimizer.built:
            self.optimizer.build(self.forward_variables)
        if (self.feedback_optimizer is not None
                and not self.feedback_optimizer.built):
            self.feedback_optimizer.build(self.learned_feedback)

    @property
    def metrics(self):
        return [self.loss_tracker, *self.extra_metrics,
                *(self.diagnostics.metrics if self.diagnostics is not None
                  else [])]

    @property
    def forward_variables(self):
        """What the main optimizer updates (KP's B included: it is W's
        twin)."""
        return [v for layer in (*self.blocks, self.output_layer)
                for v in layer.trainable_variables]

    @property
    def learned_feedback(self):
        return [p.feedback for p in self.projections if p.learns_feedback]

    # --- Forward ------------------------------------------------------------

    def forward(self, x, training=False, probe=None, block_tapes=None):
        """Hidden block outputs (pre-dropout) and logits z.

        `block_tapes` (a list) receives one tape per block that recorded
        that block alone.  A direct rule differentiates each h_l with
        respect to its block's variables from it: from the tape of the
        whole pass, each such gradient would also walk back through every
        earlier block (TensorFlow's tape does not prune by source), so
        tracing the step would grow with the square of the depth (resnet56
        under dfa: 26 s against 8 s for bp)."""
        hidden = []
        for block, dropout in zip(self.blocks, self.dropouts):
            with (tf.GradientTape() if block_tapes is not None
                  else contextlib.nullcontext()) as block_tape:
                h = block(x, training=training)
            if block_tapes is not None:
                block_tapes.append(block_tape)
            if probe is not None:
                h = probe.perturb(h)
            hidden.append(h)
            x = dropout(h, training=training) if dropout is not None else h
        if len(x.shape) > 2:
            x = tf.reshape(x, (-1, math.prod(x.shape[1:])))
        return hidden, self.output_layer(x)

    def output_function(self, z):
        return projection.output_function(self.output_fn)(z)

    def call(self, x, training=False):
        return self.output_function(logits32(self.forward(x, training)[1]))

    def target(self, y):
        """What the output is scored against: one-hot labels (class ids,
        (N,) or (N, 1), as dataset files hold them, are made one-hot: a
        loaded model evaluates on either) or flat x."""
        if not self.classify:
            return tf.reshape(y, (tf.shape(y)[0], -1))
        classes = self.spec["target_dim"]
        rank = y.shape.rank  # (None when Keras relaxed a retraced step)
        if rank == 1 or (y.dtype.is_integer and (
                rank is None or (rank == 2 and y.shape[-1] == 1))):
            ids = tf.cast(tf.reshape(y, (-1,)), tf.int32)
            return tf.one_hot(ids, classes, dtype=tf.float32)
        if y.dtype != tf.float32:
            y = tf.cast(y, tf.float32)
        return y if rank is not None else tf.reshape(y, (-1, classes))

    def global_loss(self, target, z):
        if self.classify:
            return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                labels=target, logits=z))
        return tf.reduce_mean(tf.square(target - self.output_function(z)))

    # --- Training -----------------------------------------------------------

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        step = self.compute_gradients(x, y)
        self.apply_step(step)
        return self.update_metrics(step.loss, step.target, step.z)

    def apply_step(self, step: "Step"):
        """Both optimizers apply the step's gradients."""
        # No variable moves before every gradient is computed.  The backward
        # pass of KP reads B, which the optimizer also updates, and grappler
        # drops the order between that read and the update (without XLA):
        # the hidden errors could use B of step t + 1.  (The optimizers'
        # slots are created first: not under the dependencies, which would
        # keep their creation inside the compiled step.)
        self.build_optimizers()
        with tf.control_dependencies([*step.grads, *step.feedback_grads]):
            if step.loss_scale is not None:
                self._apply_loss_scaled(step)
                return
            self.optimizer.apply(step.grads, self.forward_variables)
            if step.feedback_grads:
                self.feedback_optimizer.apply(step.feedback_grads,
                                              self.learned_feedback)

    def _apply_loss_scaled(self, step):
        """mixed_float16: LossScaleOptimizer divides S out of the forward
        gradients and applies them (doubling S after its growth steps of
        finite gradients), and the feedback optimizer applies its float32
        gradients, only if every gradient of both is finite; otherwise
        neither moves anything (nor KP's B, a forward variable) and S
        halves with its growth count reset, as LossScaleOptimizer does
        alone (its own check then sees finite gradients)."""
        scaler = self.optimizer
        finite = scaler.check_finite([*step.grads, *step.feedback_grads])

        def apply():
            scaler.apply(step.grads, self.forward_variables)
            if step.feedback_grads:
                self.feedback_optimizer.apply(step.feedback_grads,
                                              self.learned_feedback)

        def skip():
            scaler.step_counter.assign(0)
            scaler.dynamic_scale.assign(scaler.dynamic_scale * 0.5)

        keras.ops.cond(finite, apply, skip)

    def loss_scale(self):
        """S, the dynamic loss scale of a LossScaleOptimizer (compiled
        under mixed_float16), read as a tensor; None for any other
        optimizer.  The optimizer is built first, so that a compiled step
        reads its variable, not its initial value."""
        if not isinstance(getattr(self, "optimizer", None),
                          keras.optimizers.LossScaleOptimizer):
            return None
        self.build_optimizers()
        return tf.convert_to_tensor(self.optimizer.dynamic_scale)

    def compute_gradients(self, x, y, training=True) -> "Step":
        """One forward pass and the rule's gradients, applied by nobody.

        Direct rules read the tape once per block (and once for e), so only
        they need it persistent."""
        target = self.target(y)
        scale = self.loss_scale()
        probe = self.rule.tangent_probe(self.seed_generator)
        block_tapes = None if self.rule.chained else []
        with (probe or contextlib.nullcontext()), \
                tf.GradientTape(persistent=not self.rule.chained
                                or self.diagnostics is not None) as tape:
            hidden, z = self.forward(x, training=training, probe=probe,
                                     block_tapes=block_tapes)
            z = logits32(z)
            loss = self.global_loss(target, z)
        grads, feedback_grads, taught = self.rule_gradients(
            tape, loss, hidden, z, target, probe, block_tapes, scale)
        step = Step(grads, feedback_grads, loss, target, z, hidden, scale,
                    *taught)
        if self.diagnostics is not None:  # trackers.py (before any update)
            self.diagnostics.observe(self, tape, step)
        return step

    def rule_gradients(self, tape, loss, hidden, z, target, probe=None,
                       block_tapes=None, scale=None):
        """Gradients for `forward_variables` (× `scale` S, when given:
        what enters the backward pass is scaled) and for
        `learned_feedback` (float32, never scaled), and ([δ_l], [ℓ_l]) as
        the rule taught them (empty for chained rules)."""
        if self.rule.chained:  # ∂(S·L)/∂W
            return tape.gradient(loss, self.forward_variables,
                                 output_gradients=scale), [], ([], [])
        error = tape.gradient(loss, z)  # e, float32 (z is)
        tangents = (probe.tangents(z) if probe is not None
                    else [None] * len(hidden))
        grads, feedback_grads, signals, losses = [], [], [], []
        for index, (block, proj, h, tangent) in enumerate(zip(
                self.blocks, self.projections, hidden, tangents)):
            signal, local_loss, feedback_grad = proj.teach(h, error, target,
                                                           tangent)
            signals.append(signal)
            losses.append(local_loss)
            grads += (block_tapes[index] if block_tapes else tape).gradient(
                h, block.trainable_variables,
                output_gradients=injected(signal, h.dtype, scale))
            if feedback_grad is not None:
                feedback_grads.append(feedback_grad)
        grads += tape.gradient(z, self.output_layer.trainable_variables,
                               output_gradients=injected(error, z.dtype,
                                                         scale))
        return grads, feedback_grads, (signals, losses)

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        target = self.target(y)
        hidden, z = self.forward(x, training=False)
        z = logits32(z)
        logs = self.update_metrics(self.global_loss(target, z), target, z)
        if self.diagnostics is not None:  # trackers.py: local losses
            logs = self.diagnostics.observe_test(self, hidden, z, target,
                                                 logs)
        return logs

    def update_metrics(self, loss, target, z):
        self.loss_tracker.update_state(
            loss, sample_weight=tf.cast(tf.shape(z)[0], loss.dtype))
        y_pred = self.output_function(z)
        for metric in self.extra_metrics:
            metric.update_state(target, y_pred)
        return {m.name: m.result() for m in self.metrics}


def logits32(z):
    """The logits in float32, where every loss is computed (the identity
    under float32)."""
    return tf.cast(z, tf.float32)


def injected(signal, dtype, scale=None):
    """A float32 teaching signal (δ_l or e) as it enters the backward pass
    of a tensor of `dtype`: × S under loss scaling, then cast (both no-ops
    under float32).  Scaling before the cast keeps small float16 signals
    from flushing to zero."""
    if scale is not None:
        signal = signal * scale
    return tf.cast(signal, dtype)
