"""TF Serving's REST JSON for predict: a request's "instances" (row format) or "inputs"
(columnar format), {"b64": ...} strings included, turned into input arrays checked against
the signature, and a predict's outputs turned into the JSON response."""

from __future__ import annotations

import base64
import math

from .errors import RequestError
from .limits import MAX_NESTING, check_count


def spec_shape(spec):
    """A TensorSpec's shape as a list, None for an unknown dimension."""
    return [None if d is None else int(d) for d in spec.shape.as_list()]


def rows_to_inputs(instances, specs, max_instances=None) -> dict:
    if not isinstance(instances, list):
        raise RequestError("\"instances\" must be a list")
    if not instances:
        raise RequestError("\"instances\" is empty: send at least one instance")
    check_count(len(instances), max_instances)
    keys = list(specs)
    named = {key: [] for key in keys}
    for index, instance in enumerate(instances):
        if len(keys) == 1 and not (isinstance(instance, dict) and keys[0] in instance):
            # One input: an instance is its value (a {"b64": ...} object is a value too).
            named[keys[0]].append(instance)
            continue
        if not isinstance(instance, dict):
            raise RequestError(f"instance {index}: expected an object with the inputs "
                               f"{keys}")
        unknown = sorted(set(instance) - set(keys))
        missing = sorted(set(keys) - set(instance))
        if unknown or missing:
            raise RequestError(f"instance {index}: inputs {keys} expected; unknown "
                               f"{unknown}, missing {missing}")
        for key in keys:
            named[key].append(instance[key])
    return named


def columns_to_inputs(inputs, specs) -> dict:
    keys = list(specs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        unknown = sorted(set(inputs) - set(keys))
        missing = sorted(set(keys) - set(inputs))
        if unknown or missing:
            raise RequestError(f"\"inputs\": inputs {keys} expected; unknown {unknown}, "
                               f"missing {missing}")
        return dict(inputs)
    if len(keys) != 1:
        raise RequestError(f"\"inputs\" must name the inputs {keys}")
    return {keys[0]: inputs}


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _leaves(value, depth=0):
    """The scalars of a nested list, and the list's shape (None when ragged)."""
    if depth > MAX_NESTING:
        raise RequestError(f"lists nested more than {MAX_NESTING} deep: no input of this "
                           "model has that many dimensions")
    if isinstance(value, list):
        shapes, leaves = set(), []
        for item in value:
            sub_leaves, sub_shape = _leaves(item, depth + 1)
            leaves += sub_leaves
            shapes.add(None if sub_shape is None else tuple(sub_shape))
        if len(shapes) > 1 or None in shapes:
            return leaves, None
        inner = list(shapes.pop()) if shapes else []
        return leaves, [len(value), *inner]
    return [value], []


def to_array(key, value, spec):
    """A request value for input `key` as a numpy array of the spec's dtype and shape."""
    import numpy as np

    leaves, shape = _leaves(value)
    if shape is None:
        raise RequestError(f"input '{key}': the nested lists are ragged (every list at one "
                           "depth must have the same length)")
    if spec.dtype.name == "string":
        converted = []
        for leaf in leaves:
            if _is_b64(leaf):
                try:
                    converted.append(base64.b64decode(leaf["b64"], validate=True))
                except (TypeError, ValueError):
                    raise RequestError(f"input '{key}': \"b64\" is not valid base64") from None
            elif isinstance(leaf, str):
                converted.append(leaf.encode("utf-8"))
            else:
                raise RequestError(f"input '{key}' takes strings (DT_STRING; binary data as "
                                   f"{{\"b64\": ...}}), got {type(leaf).__name__}")
        array = np.empty(len(converted), dtype=object)
        array[:] = converted
        array = array.reshape(shape)
    else:
        for leaf in leaves:
            if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
                shown = "an object" if isinstance(leaf, dict) else type(leaf).__name__
                raise RequestError(f"input '{key}' takes numbers ({spec.dtype.name}), got "
                                   f"{shown}")
        array = np.asarray(leaves, dtype=np.float64).reshape(shape)
        if not np.all(np.isfinite(array)):
            raise RequestError(f"input '{key}': NaN or infinite values")
        array = array.astype(spec.dtype.as_numpy_dtype)
    expected = spec_shape(spec)
    if len(expected) != array.ndim or any(
            want is not None and want != got for want, got in zip(expected, array.shape)):
        wanted = "[" + ", ".join("-1" if d is None else str(d) for d in expected) + "]"
        raise RequestError(f"input '{key}': shape {list(array.shape)} does not match the "
                           f"signature's {wanted}")
    return array


def _json_value(name, value):
    """One output value (numpy) as JSON, binary outputs (`*_bytes`) as {"b64": ...}."""
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [_json_value(name, item) for item in value]
        if value.dtype == np.float32:
            # float32 as its shortest decimal form (0.01, not 0.009999999776482582).
            shortest = np.empty(value.shape, dtype=object)
            shortest.ravel()[:] = [float(str(item)) for item in value.ravel()]
            return _finite(shortest.tolist())
        return _finite(value.tolist())
    if isinstance(value, bytes):
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.float32):
        return _finite(float(str(value)))
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _finite(value):
    # JSON has no NaN or infinity; TF Serving writes them as the strings below.
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def format_outputs(outputs, row) -> dict:
    arrays = {name: tensor.numpy() for name, tensor in sorted(outputs.items())}
    if not row:
        columns = {name: _json_value(name, array) for name, array in arrays.items()}
        if len(columns) == 1:
            return {"outputs": next(iter(columns.values()))}
        return {"outputs": columns}
    sizes = {array.shape[0] if array.ndim else None for array in arrays.values()}
    if len(sizes) != 1 or None in sizes:
        raise RequestError("the outputs have different batch sizes, which the row format "
                           "cannot express; use the columnar format (\"inputs\")")
    count = sizes.pop()
    if len(arrays) == 1:
        name, array = next(iter(arrays.items()))
        return {"predictions": [_json_value(name, array[i]) for i in range(count)]}
    return {"predictions": [{name: _json_value(name, array[i])
                             for name, array in arrays.items()} for i in range(count)]}
