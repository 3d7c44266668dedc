"""The one model every rule trains through.

`train_step` knows no rule by name.  It runs the forward pass under a tape
(and, for rules that ask, a forward-mode probe), then either differentiates
the loss end to end (chained rules: bp, fa, kp — the layers carry FA/KP's
feedback) or asks each hidden block's projection for its teaching signal
and differentiates each block's output with respect to that block's own
variables only.  Learned feedback matrices get their gradients from their
projection and are applied by a separate feedback optimizer.

Precision (`--precision`): the blocks and the output layer take Keras'
dtype policy; what float32 and loss scaling do where: loss_scaling.py.
"""

from __future__ import annotations

import contextlib
import math

import keras
import tensorflow as tf

import arch as arch_lib
from arch_tokens import Pool
import loss_scaling
import optimizers  # noqa: F401  (registers what a saved model's optimizers are)
import projection
import shapes
import step_metrics
import token_blocks
from blocks import blocks_from_arch
from layers import PACKAGE, make_linear
from loss_scaling import injected, logits32
from step import Step

OUTPUT_FUNCTION_OF_SCALER = {"standard": "tanh", "zero_one": "sigmoid",
                             "normalize": "linear", "identity": "linear"}


@keras.saving.register_keras_serializable(PACKAGE)
class ProjectionModel(keras.Model):
    """Blocks from an arch string, an output layer, and a training rule."""

    def __init__(self, arch, algorithm, target_dim, problem_type, input_shape,
                 activation="tanh", batch_norm=False, dropout=0.0,
                 bw_init="uniform", use_bias=True, scaler="zero_one", seed=0,
                 init="glorot_uniform", bn_momentum=0.9, bn_epsilon=1e-3,
                 precision="float32", feedback_points="block",
                 fg_directions=1, **kw):
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
                         bn_epsilon=bn_epsilon, precision=precision,
                         feedback_points=feedback_points,
                         fg_directions=fg_directions)
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
            bn_epsilon=bn_epsilon, feedback_points=feedback_points,
            dtype=policy)
        self.dropouts = [keras.layers.Dropout(block.dropout, seed=seed + i,
                                              dtype=policy)
                         if block.dropout else None
                         for i, block in enumerate(self.blocks)]
        # A token network's head (LayerNorm, pooling), after the last
        # feedback point: the output layer's, trained by L's true gradient.
        head = arch_lib.output_head(arch_lib.parse(arch))
        self.head_kind = head.kind if head is not None else None
        self.head_norm = (token_blocks.layer_norm("head_norm", policy)
                          if head is not None else None)
        self.output_layer = make_linear(
            "dense", target_dim, use_bias=use_bias,
            kernel_feedback=self.rule.kernel_feedback, bw_init=bw_init,
            seed=seed * 1000 + 999, init=init, dtype=policy)
        # p = h B and the local losses: float32 under every policy.  One
        # per feedback point (a block's, or its sublayers').
        # (pepita: one, F, that modulates the input)
        taps = (sum(len(b.tap_names) for b in self.blocks) if self.rule.direct
                else int(self.rule.modulates_input))
        self.projections = [
            self.rule(target_dim, bw_init, seed * 1000 + 500 + i,
                      self.output_fn, name=f"projection{i + 1}",
                      dtype="float32")
            for i in range(taps)]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.feedback_optimizer = None
        # loss (and accuracy, error_rate): step_metrics.py
        self.step_metrics = step_metrics.make(self.classify)
        # Diagnostics (trackers.py): a trackers.Trackers, or None.  Read when
        # a step is traced, so None adds no op and no metric to the step.
        self.diagnostics = None

    # --- Building and saving ------------------------------------------------

    def build(self, input_shape=None):
        if self.built:
            return
        shape = (None, *self.spec["input_shape"])
        projections = iter(self.projections if self.rule.direct else [])
        for block in self.blocks:
            block.build(shape)
            for tap_shape in block.tap_shapes(shape):
                proj = next(projections, None)
                if proj is not None:
                    proj.build(tap_shape)
            shape = block.compute_output_shape(shape)
        if self.rule.modulates_input:
            self.projections[0].build((None, *self.spec["input_shape"]))
        if self.head_norm is not None:
            self.head_norm.build(shape)
            shape = (shape[0], *shapes.pool_shape(
                Pool(self.head_kind), shape[1:]))
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
        return [*self.step_metrics,
                *(self.diagnostics.metrics if self.diagnostics is not None
                  else [])]

    @property
    def forward_variables(self):
        """What the main optimizer updates (KP's B included: it is W's
        twin); a rule that leaves the hidden blocks as they were made
        (shallow) updates the output layer alone."""
        if not self.rule.trains_hidden:
            return list(self.output_layer.trainable_variables)
        return [v for block in self.blocks
                for v in block.trainable_variables] + self.output_variables

    @property
    def output_variables(self):
        """The output layer's (and a token network's head's): trained by
        L's true gradient under every rule."""
        return (self.head_norm.trainable_variables if self.head_norm
                is not None else []) + self.output_layer.trainable_variables

    @property
    def learned_feedback(self):
        return [p.feedback for p in self.projections if p.learns_feedback]

    # --- Forward ------------------------------------------------------------

    def forward(self, x, training=False, probe=None, block_tapes=None,
                record=None):
        """The feedback points' outputs (each block's, the block output
        last, before dropout: `hidden`) and logits z.

        `block_tapes` (a list) receives one tape per block that recorded
        that block alone.  A direct rule differentiates each h_l with
        respect to its block's variables from it: from the tape of the
        whole pass, each such gradient would also walk back through every
        earlier block (TensorFlow's tape does not prune by source), so
        tracing the step would grow with the square of the depth (resnet56
        under dfa: 26 s against 8 s for bp).  `record` (blocks.LayerRecord)
        receives each dense or conv block's (layer output, activation) and
        each block's output after dropout."""
        hidden = []
        for block, dropout in zip(self.blocks, self.dropouts):
            # (a block of several feedback points is read once per point)
            with (tf.GradientTape(persistent=len(block.tap_names) > 1)
                  if block_tapes is not None
                  else contextlib.nullcontext()) as block_tape:
                taps = block(x, training=training, probe=probe,
                             record=record)
            if block_tapes is not None:
                block_tapes.append(block_tape)
            hidden += taps
            h = taps[-1]
            x = dropout(h, training=training) if dropout is not None else h
            if record is not None:
                record.outputs.append(x)
        if self.head_norm is not None:
            x = token_blocks.apply_head(x, self.head_kind, self.head_norm)
        if len(x.shape) > 2:
            x = tf.reshape(x, (-1, math.prod(x.shape[1:])))
        return hidden, self.output_layer(x, training=training)

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
                loss_scaling.apply_if_finite(
                    self.optimizer, self.feedback_optimizer, step,
                    self.forward_variables, self.learned_feedback)
                return
            self.optimizer.apply(step.grads, self.forward_variables)
            if step.feedback_grads:
                self.feedback_optimizer.apply(step.feedback_grads,
                                              self.learned_feedback)

    def loss_scale(self):
        """S of a LossScaleOptimizer (mixed_float16), else None; the
        optimizer is built first, so that a compiled step reads its
        variable, not its initial value."""
        if not loss_scaling.scales(getattr(self, "optimizer", None)):
            return None
        self.build_optimizers()
        return tf.convert_to_tensor(self.optimizer.dynamic_scale)

    def compute_gradients(self, x, y, training=True) -> "Step":
        """One forward pass and the rule's gradients, applied by nobody.

        Direct rules read the tape once per block (and once for e), so only
        they need it persistent."""
        target = self.target(y)
        scale = self.loss_scale()
        if self.rule.steps_itself:  # fg_w, pepita (forward_rules.py)
            return self.rule.own_step(self, x, target, scale)
        probe = self.rule.tangent_probe(self.seed_generator,
                                        self.spec["fg_directions"])
        block_tapes = [] if self.rule.direct else None
        with (probe or contextlib.nullcontext()), \
                tf.GradientTape(persistent=self.rule.direct
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
        if not self.rule.direct:  # ∂(S·L)/∂W (shallow: the output's alone)
            return tape.gradient(loss, self.forward_variables,
                                 output_gradients=scale), [], ([], [])
        error = tape.gradient(loss, z)  # e, float32 (z is)
        tangents = (probe.tangents(z) if probe is not None
                    else [None] * len(hidden))
        grads, feedback_grads, signals, losses = [], [], [], []
        taps = iter(zip(self.projections, hidden, tangents))
        for index, block in enumerate(self.blocks):
            block_tape = block_tapes[index] if block_tapes else tape
            found = {}  # (the segments partition the block's variables)
            for variables in block.segments():
                proj, h, tangent = next(taps)
                signal, local_loss, feedback_grad = proj.teach(
                    h, error, target, tangent)
                signals.append(signal)
                losses.append(local_loss)
                found.update(zip(map(id, variables), block_tape.gradient(
                    h, variables,
                    output_gradients=injected(signal, h.dtype, scale))))
                if feedback_grad is not None:
                    feedback_grads.append(feedback_grad)
            grads += [found[id(v)] for v in block.trainable_variables]
        grads += tape.gradient(z, self.output_variables,
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
        step_metrics.update(self.step_metrics, loss, target,
                            self.output_function(z) if self.classify
                            else None)
        return {m.name: m.result() for m in self.metrics}
