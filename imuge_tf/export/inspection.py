"""What a SavedModel's graph or a TFLite model is made of: op types, and the ones a model
server cannot run.

These checks need APIs that TensorFlow and LiteRT do not make public, and they are kept in
this one module so that a release that moves them breaks one small file:

- `tensorflow.python.framework.op_def_registry`: the registry of op types compiled into
  TensorFlow. The public API has no way to ask whether an op type exists, and loading a
  SavedModel to find out would fail on the first unknown op instead of naming them all.
- `tensorflow.core.protobuf.saved_model_pb2`: the SavedModel file format, read without loading
  the model, so that the nodes of every function of its library are seen as written.
- LiteRT's `Interpreter._get_ops_details`: the interpreter's only listing of a model's ops
  (its own analyzers use it).
"""

from __future__ import annotations

import os

from imuge_tf.export.conversion import _interpreter


def _saved_model_proto(saved_model_dir: str):
    """The SavedModel proto of `saved_model_dir`, parsed from its saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as handle:
        model.ParseFromString(handle.read())
    return model


def graph_ops(saved_model_dir: str) -> set:
    """Every op type in a SavedModel: its graph and every function of its library."""
    model = _saved_model_proto(saved_model_dir)
    ops = set()
    for meta_graph in model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def nonstock_ops(saved_model_dir: str) -> list:
    """Op types of the SavedModel that stock TensorFlow does not register, or that call back
    into Python (PyFunc and friends, which no model server can run). Empty is good."""
    from tensorflow.python.framework import op_def_registry

    python_ops = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    # Function calls name library functions, not registered ops; graph_ops lists their
    # bodies too, so skipping the names of library functions loses nothing.
    model = _saved_model_proto(saved_model_dir)
    functions = {function.signature.name for meta_graph in model.meta_graphs
                 for function in meta_graph.graph_def.library.function}
    return sorted(op for op in graph_ops(saved_model_dir)
                  if op in python_ops or (op not in functions
                                          and op_def_registry.get(op) is None))


def tflite_ops(model) -> list:
    """The sorted op names in a TFLite model (bytes or a path), as the interpreter reports."""
    interpreter = _interpreter(model, num_threads=1)
    # _get_ops_details is the interpreter's only listing of ops (used by its own analyzers).
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})
