"""Every rule's compiled step reads the variables of step t, never of t + 1.

The update a compiled step applies must be the update computed from the
weights before the step, with XLA and without.  Without XLA, grappler
drops the order between a read of a variable and the optimizer's update of
it unless the step asks for it: KP's backward pass read B after the same
step had updated it, on some steps, depending on thread timing.  The first
test checks the updates step by step; the second checks the order itself
in the graph grappler optimizes, where it does not depend on timing.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.framework import meta_graph
from tensorflow.python.grappler import tf_optimizer

from hparams import ALGORITHMS
from test_rules import ARCHS, CLASSES, batch, make_model

LR = 0.5
STEPS = 20
LEARNED_FEEDBACK = ("kp", "dkp", "fdfa")  # B moves in the step itself


def compiled_model(rule, kind, xla):
    arch, shape = ARCHS[kind]
    model = make_model(rule, arch, shape)
    model.compile(keras.optimizers.SGD(LR),
                  feedback_optimizer=(keras.optimizers.SGD(LR)
                                      if model.learned_feedback else None),
                  jit_compile=xla)
    model.build_optimizers()
    return model, shape


def steps_apply_pre_step_gradients(rule, kind, xla):
    """Runs STEPS compiled steps; returns, per step, the largest gap between
    what the step did and lr × the gradients of the pre-step weights."""
    model, shape = compiled_model(rule, kind, xla)
    # The reference: the same compiled computation, without any update (in
    # the same mode, since XLA draws FDFA's directions from another stream).
    gradients = tf.function(
        lambda x, y: (lambda s: (s.grads, s.feedback_grads))(
            model.compute_gradients(x, y)), jit_compile=xla)
    moved = [*model.forward_variables, *model.learned_feedback]
    gaps = []
    for step in range(STEPS):
        x, y = batch(shape, seed=100 + step)
        before = [v.numpy() for v in model.variables]
        grads, feedback_grads = gradients(tf.constant(x), tf.constant(y))
        for variable, value in zip(model.variables, before):
            variable.assign(value)  # seed states and all
        start = [v.numpy() for v in moved]
        model.train_on_batch(x, y)
        expected = [w - np.float32(LR) * np.asarray(g) for w, g in
                    zip(start, [*grads, *feedback_grads])]
        gaps.append(max(float(np.max(np.abs(v.numpy() - e) /
                                     (1e-6 + 1e-5 * np.abs(e))))
                        for v, e in zip(moved, expected)))
    return gaps


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("rule", LEARNED_FEEDBACK)
def test_each_step_applies_the_gradients_of_the_pre_step_weights(rule, kind,
                                                                 xla):
    gaps = steps_apply_pre_step_gradients(rule, kind, xla)
    bad = [step for step, gap in enumerate(gaps) if gap > 1]
    assert not bad, (f"{rule} {kind}: steps {bad} of {STEPS} did not apply "
                     f"the pre-step update (worst {max(gaps):.3g} × tol)")


def optimized_step_graph(model, shape):
    """The train step's graph as grappler optimizes it (no XLA)."""
    concrete = tf.function(model.train_step).get_concrete_function(
        (tf.TensorSpec((6, *shape)), tf.TensorSpec((6, CLASSES))))
    graph_def = meta_graph.create_meta_graph_def(graph=concrete.graph)
    fetches = meta_graph_pb2.CollectionDef()
    fetches.node_list.value.extend(
        [t.name for t in concrete.outputs]
        + [op.name for op in concrete.graph.get_operations()
           if op.type.startswith("Assign")])
    graph_def.collection_def["train_op"].CopyFrom(fetches)
    return tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), graph_def)


def unordered_reads_and_updates(graph):
    """(read, update) pairs of one variable with no path between them."""
    nodes = {node.name: node for node in graph.node}
    ancestors = {}

    def ancestors_of(name):
        if name not in ancestors:
            found, stack = set(), [name]
            while stack:
                for parent in nodes[stack.pop()].input:
                    parent = parent.lstrip("^").split(":")[0]
                    if parent not in found:
                        found.add(parent)
                        stack.append(parent)
            ancestors[name] = found
        return ancestors[name]
    reads, updates = {}, {}
    for node in graph.node:
        if node.op == "ReadVariableOp":
            reads.setdefault(node.input[0], []).append(node.name)
        elif node.op.startswith("Assign") and node.op.endswith("VariableOp"):
            updates.setdefault(node.input[0], []).append(node.name)
    return [(read, update) for resource, names in updates.items()
            for update in names for read in reads.get(resource, [])
            if read not in ancestors_of(update)
            and update not in ancestors_of(read)]


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("rule", ALGORITHMS)
def test_no_update_can_overtake_a_read_of_the_same_variable(rule, kind):
    model, shape = compiled_model(rule, kind, xla=False)
    assert unordered_reads_and_updates(
        optimized_step_graph(model, shape)) == []
