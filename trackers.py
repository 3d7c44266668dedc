"""Diagnostics every rule reports the same way: how its updates align with
backprop's (../shared/design/algorithms.md, "Diagnostics").

    python train.py --algorithm=dfa --tracker=all --tracker_every=50 ...

`--tracker` (repeatable, or comma-separated; `all`) chooses among:

  bp_cosine         bp_cosine/<layer>: cosine between the rule's gradient of
                    W_l (what the optimizer receives) and the true BP
                    gradient of W_l, on the same batch and forward pass.
  signal_cosine     signal_cosine/<block>: cosine between the teaching
                    signal at h_l (∂ℓ_l/∂h_l; for fa/kp the error that B
                    sends back) and BP's ∂L/∂h_l, the batch as one vector.
  weight_alignment  weight_alignment/<layer>: fa/kp cos(vec W_l, vec B_l)
                    (B has W's shape, dense and conv); direct rules
                    cos(vec W_l, vec B_{l-1} B_lᵀ) for dense blocks l ≥ 2
                    (both n_{l-1} × n_l) and cos(vec W_o, vec B_L) at the
                    output (both n_L × C); bp: 1, its feedback is W itself.
                    Not defined, so not logged: block1 of a direct rule (no
                    B_0), a direct rule's conv or residual block l ≥ 2
                    (W_l is a k×k kernel, B_{l-1} B_lᵀ a dense map between
                    whole feature maps) and a dense block that opens with
                    a pool (W_l does not read h_{l-1}).  fa's block1 stays near 0: its B
                    would send errors to the input, so it is never used
                    (kp moves it with W, so it aligns).
  norms             weight_norm/<layer> = ‖W_l‖ and update_norm/<layer> =
                    ‖g_l‖, g_l the rule's gradient (before the optimizer).
  local_loss        local_loss/<block>: ℓ_l of a direct rule, on training
                    steps and on validation (val_local_loss/...).  Chained
                    rules (bp, fa, kp) have no local loss.
  histograms        activations/<block>: histograms of h_l on a fixed test
                    batch every `histogram_freq` epochs, with Keras' weight
                    histograms.

<layer> is `block1`, `block2`, ... (the arch's blocks; a residual unit's
layers are `block3_conv1`, `block3_conv2` and `block3_shortcut`) or
`output`; <block> is `block1`, `block2`, ... (the blocks' outputs); only
kernels are compared (biases are not).  The scalars are means over the
measured steps of an epoch: history.csv has them as columns, TensorBoard
under the same tags (`TensorBoard` below; train/ and validation/ runs).

Cost.  The model's step reads `model.diagnostics` when it is traced: with
no tracker it is None and the compiled step is the one without this module.
With trackers, one training step in `tracker_every` (a tf.cond on the
optimizer's step counter, inside the compiled step; other steps run an
empty branch) takes one more backward pass (two for fa/kp) and a few
reductions, and updates the metrics; every step keeps its tape persistent.
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import tensorflow as tf

import hparams as hparams_lib
import layers as layers_lib

SCALAR_TAGS = {  # tracker: the tag families it logs
    "bp_cosine": ("bp_cosine",),
    "signal_cosine": ("signal_cosine",),
    "weight_alignment": ("weight_alignment",),
    "norms": ("weight_norm", "update_norm"),
    "local_loss": ("local_loss",),
    "histograms": (),
}


def parse(text: str) -> tuple[str, ...]:
    """The tracker names of a `--tracker` value ('' is none)."""
    value = hparams_lib.FIELDS_BY_NAME["tracker"].parse_set(text or "")
    return tuple(name for name in value.split(",") if name)


def layer_names(model) -> list[str]:
    """`block1`, ..., `output`: one per dense/conv layer (a residual
    unit's are `block3_conv1`, `block3_conv2`, `block3_shortcut`)."""
    return [name for block in model.blocks
            for name, _ in block.linear_layers] + ["output"]


def linear_layers(model) -> list:
    return [layer for block in model.blocks
            for _, layer in block.linear_layers] + [model.output_layer]


def block_names(model) -> list[str]:
    """`block1`, ...: one per feedback point (a block's output h_l; under
    --feedback_points=sublayer also `block2_attention`, `block2_mlp`)."""
    return [name for block in model.blocks for name in block.tap_names]


def cosine(a, b):
    """cos(vec a, vec b) in float32 (a mixed precision's gradients at h_l
    are 16-bit); 0 when either is 0."""
    a = tf.reshape(tf.cast(a, tf.float32), [-1])
    b = tf.reshape(tf.cast(b, tf.float32), [-1])
    return tf.math.divide_no_nan(tf.reduce_sum(a * b),
                                 tf.norm(a) * tf.norm(b))


def alignment_pairs(model) -> dict:
    """{layer: (W, B-like) as callables} where weight alignment is defined;
    bp's is the constant 1 (an empty callable pair)."""
    names, linear = layer_names(model), linear_layers(model)
    if model.rule.kernel_feedback:  # fa, kp, sign: B has W's shape
        return {name: (lambda l=l: l.kernel,  # (brsf: the next step's B)
                       lambda l=l: l.feedback_kernel(peek=True))
                for name, l in zip(names, linear)}
    if model.rule.chained:  # bp
        return {name: None for name in names}
    if not (model.rule.direct and model.rule.projects):
        return {}  # no feedback matrix: shallow, fg_w, fg_a, pepita
    feedback = [p.feedback for p in model.projections]
    last = []  # each block's output: its last feedback point
    for block in model.blocks:
        last.append((last[-1] if last else -1) + len(block.tap_names))
    pairs = {}
    for index, block in enumerate(model.blocks):
        # W_l reads h_{l-1} itself: a dense block that opens with no pool.
        if index and block.spec.kind == "dense" and block.spec.pre is None:
            pairs[block.name] = (
                lambda b=block: b.layer.kernel,
                lambda i=index: tf.matmul(feedback[last[i - 1]],
                                          feedback[last[i]],
                                          transpose_b=True))
    if model.head_norm is None:  # (W_o reads h_L itself: no head between)
        pairs["output"] = (lambda: model.output_layer.kernel,
                           lambda: feedback[-1])
    return pairs


class Trackers:
    """The trackers of one model: its metrics and what fills them.

    `observe` (in `compute_gradients`, before the optimizer moves anything)
    and `observe_test` (in `test_step`) are called by the model.
    """

    def __init__(self, model, names: Sequence[str], every: int = 1,
                 histogram_freq: int = 1):
        unknown = set(names) - set(SCALAR_TAGS)
        if unknown:
            raise hparams_lib.UsageError(
                f"unknown tracker(s) {sorted(unknown)} (valid: "
                f"{', '.join(SCALAR_TAGS)})")
        self.names = tuple(n for n in SCALAR_TAGS if n in names)
        self.every = max(int(every), 1)
        self.histograms = "histograms" in self.names
        self.histogram_freq = max(int(histogram_freq), 1)  # epochs
        layers, hidden = layer_names(model), block_names(model)
        direct = model.rule.direct and model.rule.projects  # (has ℓ_l(p))
        self.pairs = alignment_pairs(model)
        tags = []
        if "bp_cosine" in self.names:
            tags += [f"bp_cosine/{n}" for n in layers]
        if "signal_cosine" in self.names:
            tags += [f"signal_cosine/{n}" for n in hidden]
        if "weight_alignment" in self.names:
            tags += [f"weight_alignment/{n}" for n in self.pairs]
        if "norms" in self.names:
            tags += [f"{kind}/{n}" for kind in ("weight_norm", "update_norm")
                     for n in layers]
        self.test_tags = ([f"local_loss/{n}" for n in hidden]
                          if "local_loss" in self.names and direct else [])
        self.tags = tags + self.test_tags  # what training steps log
        self.by_tag = {tag: keras.metrics.Mean(name=tag) for tag in self.tags}

    @property
    def metrics(self) -> list:
        return list(self.by_tag.values())

    # --- Training steps -----------------------------------------------------

    def observe(self, model, tape, step) -> None:
        """Measures one step in `every` into the metrics (traced only when
        the model has trackers)."""
        if not self.tags:
            return
        with tf.name_scope("trackers"):
            optimizer = getattr(model, "optimizer", None)
            if self.every == 1 or optimizer is None:
                self.record(model, tape, step)
                return
            due = tf.equal(tf.math.floormod(
                tf.convert_to_tensor(optimizer.iterations), self.every), 0)
            # Measured and recorded only on due steps: other steps run an
            # empty branch.
            tf.cond(due, lambda: self.record(model, tape, step),
                    lambda: tf.constant(False))

    def record(self, model, tape, step):
        values = self.measure(model, tape, step)
        for tag in self.tags:
            self.by_tag[tag].update_state(values[tag])
        return tf.constant(True)

    def measure(self, model, tape, step) -> dict:
        """{tag: scalar} of one step, from its (persistent) tape."""
        names = layer_names(model)
        kernels = [layer.kernel for layer in linear_layers(model)]
        by_id = {id(v): g for v, g in zip(model.forward_variables,
                                          step.grads)}
        # (shallow leaves the hidden kernels alone: no update)
        updates = [by_id.get(id(k), tf.zeros_like(k)) for k in kernels]
        if step.loss_scale is not None:  # mixed_float16: S taken out
            updates = [g / step.loss_scale for g in updates]
        values = {}
        need_bp = {"bp_cosine", "signal_cosine"} & set(self.names)
        if need_bp:
            # Scaled as the step's gradients are (cosines do not see S).
            with layers_lib.true_gradient():  # fa/kp: back through W
                true = tape.gradient(step.loss, [*kernels, *step.hidden],
                                     output_gradients=step.loss_scale)
            true_w, true_h = true[:len(kernels)], true[len(kernels):]
        if "bp_cosine" in self.names:
            for name, g, t in zip(names, updates, true_w):
                values[f"bp_cosine/{name}"] = cosine(g, t)
        if "signal_cosine" in self.names:
            signals = (step.signals if model.rule.direct else
                       self.chained_signals(model, tape, step)
                       if model.rule.chained else  # shallow: none at all
                       [tf.zeros_like(h) for h in step.hidden])
            for name, s, t in zip(block_names(model), signals, true_h):
                values[f"signal_cosine/{name}"] = cosine(s, t)
        for tag, loss in zip(self.test_tags, step.local_losses):
            values[tag] = loss
        if "weight_alignment" in self.names:
            for name, pair in self.pairs.items():
                values[f"weight_alignment/{name}"] = (
                    tf.ones(()) if pair is None
                    else cosine(pair[0](), pair[1]()))
        if "norms" in self.names:
            for name, w, g in zip(names, kernels, updates):
                values[f"weight_norm/{name}"] = tf.norm(w)
                values[f"update_norm/{name}"] = tf.norm(g)
        return {tag: tf.cast(v, tf.float32) for tag, v in values.items()}

    @staticmethod
    def chained_signals(model, tape, step):
        """A chained rule's error at each h_l, through its own backward
        pass (FA's and KP's B): the signal its blocks' updates are made
        of.  (A direct rule's δ_l = ∂ℓ_l/∂h_l is the step's own,
        `Step.signals`, as `Projection.teach` made it.)"""
        return tape.gradient(step.loss, step.hidden,
                             output_gradients=step.loss_scale)

    # --- Evaluation ---------------------------------------------------------

    def observe_test(self, model, hidden, z, target, logs) -> dict:
        """Local losses on evaluation batches; the logs of a test step
        (only the metrics a test step fills)."""
        if self.test_tags:
            with tf.name_scope("trackers"):
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    loss = model.global_loss(target, z)
                error = tape.gradient(loss, z)
                n = tf.cast(tf.shape(z)[0], tf.float32)
                for tag, proj, h in zip(self.test_tags, model.projections,
                                        hidden):
                    self.by_tag[tag].update_state(
                        proj.local_loss(proj(h), error, target),
                        sample_weight=n)
        logs = {k: v for k, v in logs.items() if k not in self.by_tag}
        logs.update({tag: self.by_tag[tag].result() for tag in self.test_tags})
        return logs


def attach(model, hp, steps_per_epoch=None) -> Trackers | None:
    """Gives `model` the trackers of `hp` (before its step is traced);
    `tracker_every` is capped at an epoch so every epoch has a value."""
    names = parse(hp.get("tracker", ""))
    if not names:
        model.diagnostics = None
        return None
    every = int(hp.get("tracker_every", 1))
    if steps_per_epoch:
        every = min(every, int(steps_per_epoch))
    model.diagnostics = Trackers(model, names, every,
                                 hp.get("histogram_freq", 1))
    model.train_function = model.test_function = None  # retrace
    return model.diagnostics


# --- TensorBoard -------------------------------------------------------------


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, except that tracker scalars keep their
    own tags (`bp_cosine/block1`, not `epoch_bp_cosine/block1`) and, with
    the `histograms` tracker, the hidden outputs of a fixed batch (the first
    of `sample`, a dataset) are histogrammed as `activations/<block>` every
    `histogram_freq` epochs of the trackers (Keras' own `histogram_freq`
    histograms the weights)."""

    def __init__(self, log_dir, sample=None, **kw):
        super().__init__(log_dir, **kw)
        self.sample = sample
        self._tracker_writers = None
        self._sample_x = None

    def _trackers(self):
        return getattr(self.model, "diagnostics", None)

    def on_train_batch_end(self, batch, logs=None):
        # With update_freq="epoch" no writer is set for batch summaries, yet
        # Keras calls tf.summary.scalar for every metric of every execution
        # (for nothing: 0.2 s of a 1-epoch MNIST trial).
        super().on_train_batch_end(
            batch, logs if self.update_freq != "epoch" else None)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._trackers() is not None:
            self._tracker_writers = {
                run: tf.summary.create_file_writer(
                    os.path.join(self.log_dir, run))
                for run in ("train", "validation")}

    def on_epoch_end(self, epoch, logs=None):
        # Logged at step epoch + 1: epoch axes start at 1, as in the
        # report, history.csv's readers and Keras' own "Epoch 1/10".
        epoch += 1
        trackers = self._trackers()
        if trackers is None or self._tracker_writers is None:
            return super().on_epoch_end(epoch, logs)
        logs = dict(logs or {})
        own = {"train": {}, "validation": {}}
        for key in list(logs):
            tag = key[4:] if key.startswith("val_") else key
            if tag in trackers.by_tag:
                run = "validation" if key.startswith("val_") else "train"
                own[run][tag] = logs.pop(key)
        super().on_epoch_end(epoch, logs)
        for run, values in own.items():
            with self._tracker_writers[run].as_default():
                for tag, value in sorted(values.items()):
                    tf.summary.scalar(tag, value, step=epoch)
        if (trackers.histograms and self.sample is not None
                and epoch % trackers.histogram_freq == 0):  # (as Keras')
            self._log_activations(epoch)
        for writer in self._tracker_writers.values():
            writer.flush()

    def _log_activations(self, epoch):
        if self._sample_x is None:
            batch = next(iter(self.sample))
            self._sample_x = batch[0] if isinstance(batch, tuple) else batch
        hidden, _ = self.model.forward(self._sample_x, training=False)
        with self._tracker_writers["train"].as_default():
            for name, h in zip(block_names(self.model), hidden):
                tf.summary.histogram(f"activations/{name}",
                                     tf.cast(h, tf.float32), step=epoch)

    def on_test_end(self, logs=None):
        # Keras would log validation trackers again, as
        # evaluation_local_loss/block1_vs_iterations.
        trackers = self._trackers()
        if trackers is not None and logs:
            logs = {k: v for k, v in logs.items() if k not in trackers.by_tag}
        super().on_test_end(logs)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        for writer in (self._tracker_writers or {}).values():
            writer.close()
        self._tracker_writers = None
