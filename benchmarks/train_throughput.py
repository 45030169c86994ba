"""How fast a config trains on this machine, and how close that is to what the CPU can do.

    python benchmarks/train_throughput.py [--config demo] [--data DIR] [--steps 10]
        [--repeats 3] [--set KEY=VALUE ...] [--no-write]

Measures, prints, and writes into its section of BENCHMARKS.md:

1. Training throughput: images/s of `tf.function(model.train_step)` on real batches from
   `make_dataset` (its prefetched iterator), after warm-up steps, as the median of `repeats`
   runs of `steps` steps. Twice: at step 0 (progressive stage 1, task decoupling on, as a run
   starts) and at the final stage (stage 4, full resolution, faded in, decoupling lifted: the
   longest and most expensive part of a run). Both use the same traced function: the stage is
   a function of the optimizer's step counter, so the benchmark sets that counter instead of
   building a second model.
2. FLOPs per image: of the traced train step, and of each network's forward pass (E, V, R,
   D_C, D_S) at the config's image size. TF's profiler (`model_analyzer.profile` with
   `float_operation()`) only sees the ops of the top-level graph, not those inside function
   bodies such as the `tf.switch_case` of progressive recovery (the decoder and its gradient)
   or `map_fn` loops. So the count here walks the graph and every function it calls (for the
   stage switch, only the branch of the measured stage; for a `tf.cond`, the dearer branch;
   loops times their trip count), takes each op's count from the same registry the profiler
   uses, and counts convolutions (forward and both backward ops) analytically as
   2 * k_h * k_w * C_in * C_out * H_out * W_out * batch. The profiler's own top-level figure
   is printed next to it.
3. This machine's convolution throughput: a float32 3x3 Conv2D, batch 8, 128x128, 64 -> 64
   channels, NHWC, forward + both backward ops in a tf.function, median GFLOP/s; and the share
   of it that training achieves (aim: 40 % or more).
4. The input pipeline alone: images/s of `make_dataset` with the config's sizes, and its ratio
   to the training throughput (aim: 5x or more).

It also profiles one final-stage step with the TensorFlow profiler and splits the op time
between the networks, the attack layer and the losses (each forward / backward), the optimizers
and the metrics, and between convolutions, GroupNorm and other ops. (The attack layer, losses
and metric updates are put under name scopes for this; the computation is unchanged.)

Runs in 3 to 5 minutes on 2 CPU cores with the defaults (the first call of the train step
spends most of a minute tracing and optimizing the graph; that is excluded from the timings).
Other processes on the machine slow everything down: the load average is recorded.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time

import common
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as framework_ops

from imuge_tf.config import load_config
from imuge_tf.data import find_images, load_images, make_dataset
from imuge_tf.models.factory import build_imuge, compile_imuge
from imuge_tf.models.unet import LEVELS
from imuge_tf.samples import sample_photos

SECTION = "train_throughput"
CONV_SHARE_AIM = 0.40
PIPELINE_RATIO_AIM = 5.0
# The reference convolution of item 3.
CONV_BATCH, CONV_SIZE, CONV_CHANNELS, CONV_KERNEL = 8, 128, 64, 3
CONV_RUNS = 7
PIPELINE_WARMUP_BATCHES = 4
PIPELINE_BATCHES = 40

CONV_OP_TYPES = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter",
                 "DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                 "DepthwiseConv2dNativeBackpropFilter")
CASE_OP_TYPES = ("Case", "StatelessCase")
IF_OP_TYPES = ("If", "StatelessIf")
WHILE_OP_TYPES = ("While", "StatelessWhile")


# --------------------------------------------------------------------------------------------
# FLOP counting
# --------------------------------------------------------------------------------------------


class FlopCount:
    """Float operations of a graph and the functions it calls, by op type."""

    def __init__(self):
        self.by_type = collections.Counter()
        self.uncounted = collections.Counter()  # op types with no FLOP formula, by op count
        self.unknown_trip_counts = 0  # while loops counted once

    @property
    def total(self) -> float:
        return float(sum(self.by_type.values()))

    @property
    def conv(self) -> float:
        return float(sum(v for k, v in self.by_type.items() if k in CONV_OP_TYPES))

    def add(self, other: FlopCount, times: float = 1.0) -> None:
        for key, value in other.by_type.items():
            self.by_type[key] += value * times
        self.uncounted.update(other.uncounted)
        self.unknown_trip_counts += other.unknown_trip_counts


def _elements(tensor) -> int | None:
    shape = tensor.shape
    if shape.rank is None or not shape.is_fully_defined():
        return None
    return int(np.prod(shape.as_list(), dtype=np.int64))


def _static_shape(tensor) -> list | None:
    shape = tensor.shape
    return shape.as_list() if shape.rank is not None and shape.is_fully_defined() else None


def _conv_flops(op) -> float | None:
    """2 * k_h * k_w * C_in * C_out * H_out * W_out * batch for the convolution `op` belongs to.

    The forward op's output and both backward ops' `out_backprop` input are the same
    [batch, H_out, W_out, C_out] tensor, so one formula covers the three.
    """
    kind = op.type
    if kind in ("Conv2D", "DepthwiseConv2dNative"):
        out, kernel = op.outputs[0], op.inputs[1]
    elif kind in ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput"):
        out, kernel = op.inputs[2], op.inputs[1]
    else:  # the filter gradients: their output has the kernel's shape
        out, kernel = op.inputs[2], op.outputs[0]
    out_elements, kernel_shape = _elements(out), _static_shape(kernel)
    if out_elements is None or kernel_shape is None:
        return None
    height, width, channels_in = kernel_shape[:3]
    if kind.startswith("Depthwise"):
        return 2.0 * out_elements * height * width  # one input channel per output channel
    return 2.0 * out_elements * height * width * channels_in


def _einsum_flops(op) -> float | None:
    """2 x the product of all index sizes (a multiply and an add per term) for 2 operands."""
    equation = op.get_attr("equation").decode()
    if "..." in equation or "->" not in equation:
        return None
    operands = equation.split("->")[0].split(",")
    sizes = {}
    for letters, tensor in zip(operands, op.inputs):
        shape = _static_shape(tensor)
        if shape is None or len(shape) != len(letters):
            return None
        sizes.update(zip(letters, shape))
    product = float(np.prod(list(sizes.values()), dtype=np.float64))
    return 2.0 * product if len(operands) > 1 else product


def _registry_flops(graph, op) -> float | None:
    """The count TF's profiler would give this op, or None when it has no formula."""
    try:
        value = framework_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
    except (ValueError, KeyError, TypeError):  # shapes not known statically
        return None
    return None if value is None else float(value)


def _called_functions(op) -> dict:
    """{attribute: [function names]} of a functional op (Case, If, While, PartitionedCall)."""
    found = {}
    for key, value in op.node_def.attr.items():
        if value.HasField("func"):
            found[key] = [value.func.name]
        elif value.HasField("list") and len(value.list.func):
            found[key] = [f.name for f in value.list.func]
    return found


class GraphFlops:
    """Counts FLOPs of a FuncGraph and its functions; `stage` picks the stage switch branch."""

    def __init__(self, root_graph, stage: int):
        self.root = root_graph
        self.stage = stage
        self.memo = {}

    def _function_graph(self, graph, name):
        for owner in (graph, self.root):
            getter = getattr(owner, "_get_function", None)
            function = getter(name) if getter is not None else None
            if function is not None and getattr(function, "graph", None) is not None:
                return function.graph
        return None

    def _function(self, graph, name) -> FlopCount:
        if name not in self.memo:
            body = self._function_graph(graph, name)
            count = FlopCount()
            if body is None:
                count.uncounted[f"function {name}"] += 1
            else:
                count = self.count(body)
            self.memo[name] = count
        return self.memo[name]

    def count(self, graph) -> FlopCount:
        total = FlopCount()
        for op in graph.get_operations():
            functions = _called_functions(op)
            if functions:
                self._functional(graph, op, functions, total)
                continue
            if op.type in CONV_OP_TYPES:
                flops = _conv_flops(op)
            elif op.type == "Einsum":
                flops = _einsum_flops(op)
            else:
                flops = _registry_flops(graph, op)
            if flops is None:
                total.uncounted[op.type] += 1
            elif flops:
                total.by_type[op.type] += flops
        return total

    def _functional(self, graph, op, functions, total):
        if op.type in CASE_OP_TYPES:
            branches = functions.get("branches", [])
            if len(branches) == LEVELS:  # the progressive-recovery stage switch
                total.add(self._function(graph, branches[self.stage - 1]))
            else:
                total.add(self._dearest(graph, branches))
        elif op.type in IF_OP_TYPES:
            branches = functions.get("then_branch", []) + functions.get("else_branch", [])
            total.add(self._dearest(graph, branches))
        elif op.type in WHILE_OP_TYPES:
            # while_v2 passes (loop counter, maximum_iterations, *loop variables).
            trips = tf.get_static_value(op.inputs[1]) if len(op.inputs) > 1 else None
            body = self._function(graph, functions["body"][0])
            if trips is None or int(trips) < 0:
                total.add(body)
                total.unknown_trip_counts += 1
            else:
                total.add(body, times=int(trips))
        else:  # PartitionedCall and the like: each called function once
            for names in functions.values():
                for name in names:
                    total.add(self._function(graph, name))

    def _dearest(self, graph, names) -> FlopCount:
        counts = [self._function(graph, name) for name in names]
        return max(counts, key=lambda c: c.total) if counts else FlopCount()


def profiler_flops(graph) -> float | None:
    """TF's profiler: total float ops of the top-level graph (function bodies not included)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    try:
        return float(model_analyzer.profile(graph, options=options).total_float_ops)
    except Exception as error:  # noqa: BLE001 - report, do not fail the benchmark
        common.log(f"profiler FLOP count failed: {type(error).__name__}: {error}")
        return None


def network_forward_flops(model, image_size: int) -> dict:
    """GFLOPs of one image through each network's forward pass (inference, training=False)."""
    image = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
    mask = tf.TensorSpec([1, image_size, image_size, 1], tf.float32)
    networks = [("E (encoder)", model.encoder, (image,)),
                ("V (verifier)", model.verifier, (image,)),
                ("R (decoder, full size)", model.decoder, (image, mask))]
    if model.use_discriminators:
        networks += [("D_C (container discr.)", model.container_discriminator, (image,)),
                     ("D_S (recovery discr.)", model.recovery_discriminator, (image,))]
    results = {}
    for label, network, specs in networks:
        if len(specs) == 2:
            function = tf.function(lambda x, m, net=network: net([x, m], training=False))
        else:
            function = tf.function(lambda x, net=network: net(x, training=False))
        graph = function.get_concrete_function(*specs).graph
        results[label] = GraphFlops(graph, stage=LEVELS).count(graph)
    return results


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def conv_throughput(runs: int = CONV_RUNS, channels: int = CONV_CHANNELS,
                    size: int = CONV_SIZE, batch: int = CONV_BATCH) -> dict:
    """GFLOP/s of a float32 3x3 same-padded Conv2D, forward and forward + backward."""
    generator = tf.random.Generator.from_seed(0)
    inputs = generator.normal([batch, size, size, channels])
    kernel = tf.Variable(generator.normal([CONV_KERNEL, CONV_KERNEL, channels, channels]) * 0.05)
    upstream = generator.normal([batch, size, size, channels])

    @tf.function
    def forward(x):
        return tf.nn.conv2d(x, kernel, strides=1, padding="SAME")

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME")
        return tape.gradient(y, [x, kernel], output_gradients=upstream)

    one_pass = 2.0 * batch * size * size * CONV_KERNEL * CONV_KERNEL * channels * channels
    results = {}
    for name, function, flops in (("forward", forward, one_pass),
                                  ("forward+backward", forward_backward, 3 * one_pass)):
        for _ in range(2):
            _sync(function(inputs))
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            _sync(function(inputs))
            rates.append(flops / (time.perf_counter() - start) / 1e9)
        results[name] = common.spread(rates)
    return results


def _sync(outputs):
    """Fetches one number from each output, so the work is surely done."""
    for tensor in tf.nest.flatten(outputs):
        float(tf.reshape(tensor, [-1])[0])


def pipeline_throughput(images, dataset_args: dict, repeats: int) -> common.Spread:
    """Images/s of the input pipeline alone, after warm-up batches."""
    dataset, _ = make_dataset(images, **dataset_args, seed=1)
    iterator = iter(dataset)
    for _ in range(PIPELINE_WARMUP_BATCHES):
        next(iterator)
    batch = dataset_args["batch_size"]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(PIPELINE_BATCHES):
            next(iterator)
        rates.append(PIPELINE_BATCHES * batch / (time.perf_counter() - start))
    return common.spread(rates)


def time_training(step, iterator, batch_size: int, steps: int, repeats: int) -> common.Spread:
    """Images/s of `repeats` runs of `steps` train steps, batches pulled as in training."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            logs = step(next(iterator))
        _sync(logs["L_G"])
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return common.spread(rates)


# --------------------------------------------------------------------------------------------
# Where the time goes: one profiled step
# --------------------------------------------------------------------------------------------

_OP_EVENT = re.compile(r"^([^\s:]+):([A-Za-z_]\w*)$")
_FUNCTIONAL_TYPES = set(CASE_OP_TYPES + IF_OP_TYPES + WHILE_OP_TYPES) | {
    "PartitionedCall", "StatefulPartitionedCall"}


# Name scopes put around parts of the train step that have none of their own (labels only).
ATTACK_SCOPE, LOSS_SCOPE, METRIC_SCOPE = "attack_layer", "losses", "metrics"


def label_model_ops(model) -> None:
    """Wraps the attack layer, the generator losses and the metric updates in name scopes.

    Only the names of the traced ops change (so the profile can tell them apart); the
    computation is the same. The networks and optimizers are already named by Keras.
    """
    def scoped(function, scope):
        def call(*args, **kwargs):
            with tf.name_scope(scope):
                return function(*args, **kwargs)
        return call

    model.attacks = scoped(model.attacks, ATTACK_SCOPE)
    model._generator_losses = scoped(model._generator_losses, LOSS_SCOPE)
    model._update_metrics = scoped(model._update_metrics, METRIC_SCOPE)


def _component(name: str, networks: list, optimizers: set) -> str:
    """The network, 'optimizers', a scope of `label_model_ops` or 'other' for an op name."""
    parts = name.split("/")
    if re.sub(r"_\d+$", "", parts[0]) in optimizers:
        return "optimizers"
    for part in parts:
        for network in networks:
            if part == network or part.startswith(network + "_"):
                return network
    if "switch_case" in parts:  # the progressive decoder's branches (and their gradients)
        return networks[2]
    for scope in (ATTACK_SCOPE, LOSS_SCOPE, METRIC_SCOPE):
        if scope in parts:
            return scope
    return "other (schedule, discriminator losses, glue)"


def profile_step(step, iterator, model) -> dict | None:
    """Runs one train step under the TF profiler; op time split by component and op kind."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as error:
        common.log(f"no time split: {error}")
        return None
    networks = [model.encoder.name, model.verifier.name, model.decoder.name]
    if model.use_discriminators:
        networks += [model.container_discriminator.name, model.recovery_discriminator.name]
    optimizers = {re.sub(r"_\d+$", "", opt.name)
                  for opt in (model.optimizer, model.discriminator_optimizer)}
    logdir = tempfile.mkdtemp(prefix="imuge-profile-")
    try:
        batch = next(iterator)
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        try:
            _sync(step(batch)["L_G"])
        finally:
            wall = time.perf_counter() - start
            tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not paths:
            common.log("no time split: the profiler wrote no trace")
            return None
        space = xplane_pb2.XSpace()
        with open(paths[0], "rb") as handle:
            space.ParseFromString(handle.read())
    except Exception as error:  # noqa: BLE001 - the split is a bonus, not the benchmark
        common.log(f"no time split: {type(error).__name__}: {error}")
        return None
    finally:
        shutil.rmtree(logdir, ignore_errors=True)

    by_component = collections.Counter()
    by_kind = collections.Counter()
    by_type = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if line.name.startswith("tf_data"):  # the input pipeline's own threads
                continue
            for event in line.events:
                match = _OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
                if not match or match.group(2) in _FUNCTIONAL_TYPES:
                    continue
                name, kind = match.groups()
                seconds = event.duration_ps / 1e12
                component = _component(name, networks, optimizers)
                if component in ("optimizers", METRIC_SCOPE):
                    direction = "update"
                elif name.startswith("gradient_tape/") or "/gradients/" in name:
                    direction = "backward"
                else:
                    direction = "forward"
                by_component[component, direction] += seconds
                if "Conv2D" in kind or "Conv2d" in kind:
                    by_kind["convolutions"] += seconds
                elif "_norm" in name:
                    by_kind["GroupNorm / InstanceNorm"] += seconds
                else:
                    by_kind["other ops"] += seconds
                by_type[kind] += seconds
    total = sum(by_component.values())
    if not total:
        common.log("no time split: no op events in the trace")
        return None
    return {"wall": wall, "op_time": total, "by_component": by_component, "by_kind": by_kind,
            "by_type": by_type}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------






def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo",
                        help="config name (smoke, demo, paper) or YAML path (default: demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, e.g. train.batch_size=4")
    parser.add_argument("--data", default=None,
                        help="folder of photos (default: the bundled scikit-image photos)")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first call traces the graph)")
    return args


def run(args) -> dict:
    started = time.perf_counter()
    load_before = common.load_average()
    config = load_config(args.config, overrides=args.overrides)
    size, batch_size = config.model.image_size, config.train.batch_size
    data = config.data
    dataset_args = {
        "image_size": size,
        "batch_size": batch_size,
        "load_size": data.load_size or None,
        "mask_area_range": data.mask_area_range,
        "mask_largest_range": data.mask_largest_range,
        "mask_max_regions": data.mask_max_regions,
        "mask_shapes": data.mask_shapes,
    }
    results = {"config": config, "args": args, "load_before": load_before}

    common.log(f"config '{config.name}': {size} px, batch {batch_size}")
    common.log(f"reference conv: {CONV_CHANNELS}->{CONV_CHANNELS} channels, "
               f"{CONV_SIZE}x{CONV_SIZE}, batch {CONV_BATCH}")
    results["conv"] = conv_throughput()
    results["conv_narrow"] = conv_throughput(channels=config.model.base_filters, size=size,
                                             batch=batch_size)

    if args.data:  # decoded once; make_dataset then crops from memory, as in training
        common.log(f"loading photos from {args.data}")
        images, stats = load_images(find_images(args.data), size, dataset_args["load_size"])
        data_label = f"{stats.loaded} photos from {args.data}"
    else:
        images = sample_photos()
        data_label = f"{len(images)} bundled scikit-image photos"
    results["data_label"] = data_label
    common.log(f"input pipeline alone ({data_label})")
    results["pipeline"] = pipeline_throughput(images, dataset_args, args.repeats)

    common.log("building and compiling the model")
    model = compile_imuge(build_imuge(config), config)
    label_model_ops(model)
    dataset, _ = make_dataset(images, **dataset_args, seed=config.data.seed)
    iterator = iter(dataset)
    step = tf.function(model.train_step)
    common.log("tracing the train step")
    start = time.perf_counter()
    concrete = step.get_concrete_function(next(iterator))
    results["trace_seconds"] = time.perf_counter() - start

    common.log("counting FLOPs")
    stages = []
    final_step = common.final_stage_step(config)
    first_stage = int(model.schedule(0)[0].numpy())
    if first_stage != LEVELS:
        stages.append((f"stage {first_stage} (start)", 0, first_stage))
    last_stage = int(model.schedule(final_step)[0])
    stages.append((f"stage {last_stage} (final)", final_step, last_stage))
    results["profiler_flops"] = profiler_flops(concrete.graph)
    step_flops = {}
    for label, _, stage in stages:
        step_flops[label] = GraphFlops(concrete.graph, stage=stage).count(concrete.graph)
    results["step_flops"] = step_flops
    results["network_flops"] = network_forward_flops(model, size)

    timings = {}
    for label, at_step, _ in stages:
        model.optimizer.iterations.assign(at_step)
        schedule = common.describe_schedule(model, at_step)
        common.log(f"warming up {label} ({schedule})")
        start = time.perf_counter()
        for index in range(args.warmup):
            _sync(step(next(iterator))["L_G"])
            if index == 0:
                first_call = time.perf_counter() - start
        common.log(f"timing {label}: {args.repeats} x {args.steps} steps")
        timings[label] = {"schedule": schedule, "first_call": first_call,
                          "rate": time_training(step, iterator, batch_size, args.steps,
                                                args.repeats)}
    results["timings"] = timings

    common.log(f"profiling one {stages[-1][0]} step")
    results["profile"] = profile_step(step, iterator, model)
    results["load_after"] = common.load_average()
    results["seconds"] = time.perf_counter() - started
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _g(flops: float) -> str:
    return f"{flops / 1e9:.2f}"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "n/a"


def summarize(results) -> dict:
    """The headline figures derived from the raw results."""
    config = results["config"]
    batch_size = config.train.batch_size
    final_label = list(results["timings"])[-1]
    conv_rate = results["conv"]["forward+backward"].median
    rows = []
    for label, timing in results["timings"].items():
        flops = results["step_flops"][label]
        rate = timing["rate"]
        achieved = flops.total / batch_size * rate.median / 1e9
        rows.append({"label": label, "schedule": timing["schedule"], "rate": rate,
                     "seconds_per_step": batch_size / rate.median,
                     "first_call": timing["first_call"],
                     "gflop_per_image": flops.total / batch_size / 1e9,
                     "conv_share_of_flops": flops.conv / flops.total if flops.total else 0.0,
                     "achieved": achieved, "share": achieved / conv_rate})
    final = rows[-1]
    pipeline = results["pipeline"].median
    # How fast the model's own convolutions run, apart from the rest of the step: its conv
    # FLOPs over the convolutions' share of the op time applied to the profiled wall time.
    # (Op time is summed over the inter-op threads, which overlap, so conv FLOPs over conv op
    # time alone would understate the rate.)
    profile = results["profile"]
    conv_seconds = profile["by_kind"].get("convolutions", 0.0) if profile else 0.0
    own_conv_rate = None
    if conv_seconds:
        conv_wall = conv_seconds / profile["op_time"] * profile["wall"]
        own_conv_rate = results["step_flops"][final_label].conv / conv_wall / 1e9
    return {"rows": rows, "final": final, "final_label": final_label, "conv_rate": conv_rate,
            "own_conv_rate": own_conv_rate,
            "pipeline_ratio": pipeline / final["rate"].median,
            "pipeline_ratio_start": pipeline / rows[0]["rate"].median}


def report_text(results, summary) -> str:
    """The plain-text report printed on stdout."""
    config, args = results["config"], results["args"]
    facts = common.machine_facts()
    lines = [
        f"train_throughput: config '{config.name}' ({config.model.image_size} px, batch "
        f"{config.train.batch_size}), data: {results['data_label']}",
        f"machine: {facts['cpus']} CPUs, {facts['cpu']}; TensorFlow {facts.get('tensorflow')}, "
        f"Keras {facts.get('keras')}; load average before {results['load_before']}, "
        f"after {results['load_after']}",
        "",
        f"1. training, tf.function(model.train_step): {args.warmup} warm-up steps, then "
        f"{args.repeats} x {args.steps} steps (trace {results['trace_seconds']:.0f} s, "
        "excluded)",
    ]
    for row in summary["rows"]:
        lines.append(f"   {row['label']:17s} {row['rate'].describe(2, 'img/s')}, "
                     f"{row['seconds_per_step']:.2f} s/step  [{row['schedule']}; first call "
                     f"{row['first_call']:.0f} s]")
    lines += ["", "2. GFLOPs per image (graph walk incl. function bodies; convs analytic)"]
    for row in summary["rows"]:
        flops = results["step_flops"][row["label"]]
        lines.append(f"   train step, {row['label']:17s} {row['gflop_per_image']:7.2f} GFLOP "
                     f"(convolutions {_percent(flops.conv, flops.total)})")
    batch_size = config.train.batch_size
    if results["profiler_flops"] is not None:
        lines.append(f"   TF profiler, top-level graph only: "
                     f"{results['profiler_flops'] / batch_size / 1e9:.2f} GFLOP (misses the "
                     "ops inside function bodies: the stage switch holding R and its gradient)")
    for label, count in results["network_flops"].items():
        lines.append(f"   forward {label:24s} {_g(count.total):>7s} GFLOP "
                     f"(convolutions {_percent(count.conv, count.total)})")
    uncounted = _uncounted_summary(results["step_flops"][summary["final_label"]])
    if uncounted:
        lines.append(f"   no FLOP formula (counted as 0): {uncounted}")
    conv = results["conv"]
    lines += [
        "",
        f"3. conv {CONV_KERNEL}x{CONV_KERNEL} {CONV_CHANNELS}->{CONV_CHANNELS}, "
        f"{CONV_SIZE}x{CONV_SIZE}, batch {CONV_BATCH}, float32 NHWC: forward+backward "
        f"{conv['forward+backward'].describe(1, 'GFLOP/s')}; forward "
        f"{conv['forward'].describe(1, 'GFLOP/s')}",
        f"   same conv at the model's narrowest width ({config.model.base_filters}->"
        f"{config.model.base_filters}, {config.model.image_size}x{config.model.image_size}, "
        f"batch {batch_size}): forward+backward "
        f"{results['conv_narrow']['forward+backward'].describe(1, 'GFLOP/s')}",
    ]
    for row in summary["rows"]:
        verdict = "meets" if row["share"] >= CONV_SHARE_AIM else "BELOW"
        lines.append(f"   {row['label']:17s} achieves {row['achieved']:.1f} GFLOP/s = "
                     f"{100 * row['share']:.0f} % of the conv rate ({verdict} the aim of "
                     f"{100 * CONV_SHARE_AIM:.0f} %)")
    verdict = "meets" if summary["pipeline_ratio"] >= PIPELINE_RATIO_AIM else "BELOW"
    lines += [
        "",
        f"4. input pipeline alone: {results['pipeline'].describe(0, 'img/s')} "
        f"({PIPELINE_BATCHES} batches per run); pipeline / training = "
        f"{summary['pipeline_ratio']:.0f}x at the final stage, "
        f"{summary['pipeline_ratio_start']:.0f}x at the start ({verdict} the aim of "
        f"{PIPELINE_RATIO_AIM:.0f}x)",
    ]
    profile = results["profile"]
    if profile:
        lines += ["", f"where the time goes (one profiled {summary['final_label']} step, "
                      f"{profile['wall']:.2f} s wall, {profile['op_time']:.2f} s op time "
                      "summed over threads):"]
        lines.append(f"   {'component':46s} {'forward':>8s} {'backward':>8s} {'total':>8s}")
        for component, forward, backward, total in component_rows(profile):
            lines.append(f"   {component:46s} {_share(forward):>8s} {_share(backward):>8s} "
                         f"{_share(total):>8s}")
        lines.append("   by op kind:   " + _shares(profile["by_kind"], profile["op_time"]))
        if summary["own_conv_rate"]:
            lines.append(f"   the step's convolutions ran at about {summary['own_conv_rate']:.0f} "
                         f"GFLOP/s (their FLOPs over their share of the wall time; reference "
                         f"conv {summary['conv_rate']:.0f})")
        lines.append("   top op types: " + _shares(profile["by_type"], profile["op_time"], 8))
    lines += ["", f"total run time {results['seconds']:.0f} s"]
    return "\n".join(lines)


def component_rows(profile) -> list:
    """[(component, forward share, backward share, total share)], dearest first.

    Optimizer and metric updates are neither forward nor backward: their split is None.
    """
    total = profile["op_time"]
    split = collections.defaultdict(collections.Counter)
    for (component, direction), seconds in profile["by_component"].items():
        split[component][direction] += seconds / total
    rows = []
    for component, shares in split.items():
        whole = sum(shares.values())
        if shares["update"]:
            rows.append((component, None, None, whole))
        else:
            rows.append((component, shares["forward"], shares["backward"], whole))
    return sorted(rows, key=lambda row: -row[3])


def _share(value) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def _shares(counter, total, limit=None) -> str:
    items = counter.most_common(limit)
    return ", ".join(f"{name} {100 * value / total:.0f} %" for name, value in items)


def _uncounted_summary(count: FlopCount, limit: int = 8) -> str:
    # Ops that move or create data have no FLOPs by nature; list the arithmetic ones.
    moves = {"Const", "Identity", "Reshape", "ReadVariableOp", "Placeholder", "NoOp", "Shape",
             "StridedSlice", "ConcatV2", "Pack", "Unpack", "Fill", "Cast", "Squeeze",
             "ExpandDims", "Transpose", "Slice", "GatherV2", "OptionalFromValue", "Range",
             "OptionalNone", "OptionalGetValue", "StopGradient", "ShapeN", "ZerosLike",
             "OnesLike", "Tile", "AssignVariableOp", "AssignAddVariableOp", "IdentityN",
             "AssignSubVariableOp", "TensorListReserve", "TensorListFromTensor",
             "TensorListStack", "TensorListGetItem", "TensorListSetItem", "ConcatOffset",
             "BroadcastArgs", "BroadcastGradientArgs", "BroadcastTo", "Size", "Rank",
             "PreventGradient", "Select", "SelectV2", "Where", "Split", "SplitV", "Reverse",
             "ReverseV2", "VarHandleOp", "StatelessRandomGetKeyCounter", "Assert",
             "EmptyTensorList", "TensorListLength", "TensorListElementShape", "Pad",
             "MirrorPad", "PadV2", "StridedSliceGrad", "ResourceGather", "Bitcast"}
    items = [(kind, n) for kind, n in count.uncounted.most_common() if kind not in moves]
    return ", ".join(f"{kind} ({n})" for kind, n in items[:limit])


def report_markdown(results, summary) -> str:
    """The body of this script's BENCHMARKS.md section."""
    config, args = results["config"], results["args"]
    facts = common.machine_facts()
    batch_size = config.train.batch_size
    conv = results["conv"]
    lines = [
        "## Training throughput (`benchmarks/train_throughput.py`)",
        "",
        f"- date: {common.utc_now()}",
        f"- machine: {facts['cpus']} CPUs, {facts['cpu']}; {facts['os']}; load average "
        f"(1/5/15 min) {results['load_before']} before, {results['load_after']} after",
        f"- software: TensorFlow {facts.get('tensorflow')}, Keras {facts.get('keras')}, "
        f"Python {facts['python']}",
        f"- config: `{config.name}` ({config.model.image_size} px, batch {batch_size}, "
        f"base/max filters {config.model.base_filters}/{config.model.max_filters}, norm "
        f"{config.model.norm}); data: {results['data_label']}",
        f"- command: `{common.command_line()}`",
        "",
        f"Training: `tf.function(model.train_step)` on prefetched `make_dataset` batches, "
        f"{args.warmup} warm-up step(s), then the median of {args.repeats} runs of "
        f"{args.steps} step(s) (tracing, {results['trace_seconds']:.0f} s, excluded). The final "
        "stage is measured on the same model with its step counter moved forward.",
        "",
    ]
    rows = [[row["label"], f"`{row['schedule']}`", f"{row['rate'].median:.2f}",
             f"{row['rate'].low:.2f}-{row['rate'].high:.2f}",
             f"{row['seconds_per_step']:.2f}", f"{row['gflop_per_image']:.2f}",
             f"{row['achieved']:.1f}", f"{100 * row['share']:.0f} %"]
            for row in summary["rows"]]
    lines.append(common.markdown_table(
        ["phase", "schedule", "img/s (median)", "range", "s/step", "GFLOP/img",
         "GFLOP/s", f"share of conv rate (aim {100 * CONV_SHARE_AIM:.0f} %)"], rows))
    lines += [
        "",
        "FLOPs per image: walked through the traced graph and the functions it calls (only "
        "the measured stage's branch of the progressive-recovery switch); each op counted with "
        "TF's profiler registry, convolutions (forward, Conv2DBackpropInput, "
        "Conv2DBackpropFilter) analytically as 2·k²·C_in·C_out·H·W.",
    ]
    if results["profiler_flops"] is not None:
        lines.append(f"TF's profiler on the top-level graph alone gives "
                     f"{results['profiler_flops'] / batch_size / 1e9:.2f} GFLOP/img for the "
                     "train step: it does not enter function bodies, so it misses the decoder "
                     "and its gradient inside the stage switch.")
    lines.append("")
    network_rows = [[label, _g(count.total), _percent(count.conv, count.total)]
                    for label, count in results["network_flops"].items()]
    for row in summary["rows"]:
        flops = results["step_flops"][row["label"]]
        network_rows.append([f"train step, {row['label']}", f"{row['gflop_per_image']:.2f}",
                             _percent(flops.conv, flops.total)])
    lines.append(common.markdown_table(["graph", "GFLOP/img", "in convolutions"],
                                       network_rows))
    narrow = results["conv_narrow"]["forward+backward"]
    lines += [
        "",
        f"Conv reference: float32 {CONV_KERNEL}x{CONV_KERNEL} Conv2D, {CONV_CHANNELS}->"
        f"{CONV_CHANNELS} channels, {CONV_SIZE}x{CONV_SIZE}, batch {CONV_BATCH}, NHWC, "
        f"median of {CONV_RUNS}: forward+backward **{conv['forward+backward'].median:.1f} "
        f"GFLOP/s** (range {conv['forward+backward'].low:.1f}-"
        f"{conv['forward+backward'].high:.1f}), forward {conv['forward'].median:.1f} GFLOP/s. "
        f"At the model's narrowest width ({config.model.base_filters}->"
        f"{config.model.base_filters}, {config.model.image_size} px, batch {batch_size}): "
        f"{narrow.median:.1f} GFLOP/s forward+backward.",
        "",
        f"Input pipeline alone: **{results['pipeline'].median:.0f} img/s** (range "
        f"{results['pipeline'].low:.0f}-{results['pipeline'].high:.0f}), "
        f"{summary['pipeline_ratio']:.0f}x the final-stage training throughput "
        f"(aim {PIPELINE_RATIO_AIM:.0f}x).",
    ]
    profile = results["profile"]
    if profile:
        lines += [
            "",
            f"Where the time goes (one profiled {summary['final_label']} step, "
            f"{profile['wall']:.2f} s wall, {profile['op_time']:.2f} s of op time summed over "
            "threads; shares of that op time):",
            "",
            common.markdown_table(
                ["component", "forward", "backward", "total"],
                [[c, _share(f), _share(b), _share(t)] for c, f, b, t in component_rows(profile)]),
            "",
            f"- by op kind: {_shares(profile['by_kind'], profile['op_time'])}",
            f"- the step's convolutions ran at about {summary['own_conv_rate'] or 0:.0f} GFLOP/s "
            f"(their FLOPs over their share of the wall time; reference conv "
            f"{summary['conv_rate']:.0f} GFLOP/s)",
            f"- top op types: {_shares(profile['by_type'], profile['op_time'], 8)}",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    summary = summarize(results)
    print(report_text(results, summary))
    if not args.no_write:
        path = common.update_section(SECTION, report_markdown(results, summary))
        common.log(f"wrote the '{SECTION}' section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
