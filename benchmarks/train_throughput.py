"""How fast a config trains on this machine, and how close that is to what the CPU can do.

    python benchmarks/train_throughput.py [--config demo] [--data DIR] [--steps 10]
        [--repeats 3] [--warmup 2] [--set KEY=VALUE ...] [--out DIR] [--render-only]

1. Training: images/s of `tf.function(model.train_step)` on prefetched `make_dataset` batches,
   after warm-up steps, the median of `repeats` runs of `steps` steps. At step 0 (progressive
   stage 1, task decoupling on, as a run starts) and at the final stage (stage 4, full
   resolution, faded in, decoupling lifted: the longest part of a run). The stage is a function
   of the optimizer's step counter, so both use one traced function with that counter moved.
2. FLOPs per image of the traced train step and of each network's forward pass. TF's profiler
   (`float_operation()`) counts the top-level graph only, not function bodies such as the
   stage switch holding the decoder and its gradient, so the graph and every function it calls
   are walked: the stage switch's measured branch, a `tf.cond`'s dearer branch, a loop times
   its static trip count (once if it has none). Each op is counted with the profiler's own
   registry; convolutions (forward and both backward ops) analytically as
   2 * k_h * k_w * C_in * C_out * H_out * W_out * batch. The profiler's figure is kept too.
3. The machine's convolution rate: a float32 3x3 Conv2D, batch 8, 128x128, 64 -> 64 channels,
   NHWC, forward + both backward ops, and the share of it training achieves (aim: 40 %).
4. The input pipeline alone, and its ratio to the training throughput (aim: 5x).
5. One profiled final-stage step: op time split between the networks, the attack layer, the
   losses, the optimizers and the metrics (forward / backward), and by op kind.

Figures go to benchmarks/results/train_throughput.json, and the `train_throughput` section of
BENCHMARKS.md is rendered from that file (`--render-only`: render without measuring). Minutes
on 2 CPU cores with the defaults; other processes slow it down, so the load average is kept.

The script is over 500 lines because two of its figures need what TF does not provide: a FLOP
count that enters function bodies (item 2) and the profiler's op time split by component
(item 5); nothing else is kept that the section does not show.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
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
from imuge_tf.training import _dataset_arguments

SECTION = "train_throughput"
CONV_SHARE_AIM_PERCENT = 40
PIPELINE_RATIO_AIM = 5
# The reference convolution (item 3): wide enough to keep the CPU's conv kernels busy, so it
# stands for the rate this machine can reach, which training is compared with.
CONV_BATCH, CONV_SIZE, CONV_CHANNELS, CONV_KERNEL = 8, 128, 64, 3
CONV_RUNS = 7
PIPELINE_WARMUP_BATCHES = 4
PIPELINE_BATCHES = 40
TOP_OP_TYPES = 8

CONV_OP_TYPES = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter",
                 "DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                 "DepthwiseConv2dNativeBackpropFilter")
CASE_OP_TYPES = ("Case", "StatelessCase")
IF_OP_TYPES = ("If", "StatelessIf")
WHILE_OP_TYPES = ("While", "StatelessWhile")


# --------------------------------------------------------------------------------------------
# FLOP counting
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Flops:
    """Float operations of a graph and the functions it calls: all, and those in convolutions."""

    total: float = 0.0
    conv: float = 0.0

    def add(self, other: Flops, times: float = 1.0) -> None:
        self.total += other.total * times
        self.conv += other.conv * times


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
    """2 x the product of all index sizes (a multiply and an add per term), as the profiler's
    registry has no formula for Einsum (the DCT of the JPEG simulation is one)."""
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
    """Counts FLOPs of a FuncGraph and its functions; `stage` picks the stage switch branch.

    Ops without a formula (data movement, mostly) count as 0.
    """

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

    def _function(self, graph, name) -> Flops:
        if name not in self.memo:
            body = self._function_graph(graph, name)
            self.memo[name] = Flops() if body is None else self.count(body)
        return self.memo[name]

    def count(self, graph) -> Flops:
        total = Flops()
        for op in graph.get_operations():
            functions = _called_functions(op)
            if functions:
                self._functional(graph, op, functions, total)
            elif op.type in CONV_OP_TYPES:
                flops = _conv_flops(op) or 0.0
                total.total += flops
                total.conv += flops
            elif op.type == "Einsum":
                total.total += _einsum_flops(op) or 0.0
            else:
                total.total += _registry_flops(graph, op) or 0.0
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
            times = 1 if trips is None or int(trips) < 0 else int(trips)
            total.add(self._function(graph, functions["body"][0]), times=times)
        else:  # PartitionedCall and the like: each called function once
            for names in functions.values():
                for name in names:
                    total.add(self._function(graph, name))

    def _dearest(self, graph, names) -> Flops:
        counts = [self._function(graph, name) for name in names]
        return max(counts, key=lambda c: c.total) if counts else Flops()


def profiler_flops(graph) -> float | None:
    """TF's profiler: total float ops of the top-level graph (function bodies not included)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    try:
        return float(model_analyzer.profile(graph, options=options).total_float_ops)
    except Exception as error:  # noqa: BLE001 - the comparison figure is optional
        common.log(f"profiler FLOP count failed: {type(error).__name__}: {error}")
        return None


def _percent(part: float, whole: float) -> float | None:
    return 100 * part / whole if whole else None


def network_forward_flops(model, image_size: int) -> list:
    """GFLOPs of one image through each network's forward pass (inference, training=False)."""
    image = tf.TensorSpec([1, image_size, image_size, 3], tf.float32)
    mask = tf.TensorSpec([1, image_size, image_size, 1], tf.float32)
    networks = [("E (encoder)", model.encoder, (image,)),
                ("V (verifier)", model.verifier, (image,)),
                ("R (decoder, full size)", model.decoder, (image, mask))]
    if model.use_discriminators:
        networks += [("D_C (container discr.)", model.container_discriminator, (image,)),
                     ("D_S (recovery discr.)", model.recovery_discriminator, (image,))]
    rows = []
    for label, network, specs in networks:
        if len(specs) == 2:
            function = tf.function(lambda x, m, net=network: net([x, m], training=False))
        else:
            function = tf.function(lambda x, net=network: net(x, training=False))
        graph = function.get_concrete_function(*specs).graph
        flops = GraphFlops(graph, stage=LEVELS).count(graph)
        rows.append({"graph": label, "gflop_per_image": flops.total / 1e9,
                     "conv_percent": _percent(flops.conv, flops.total)})
    return rows


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def conv_rates(channels: int, size: int, batch: int) -> dict:
    """GFLOP/s of a float32 3x3 same-padded Conv2D: 'forward' and 'forward_backward' spreads."""
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
    rates = {}
    for name, function, flops in (("forward", forward, one_pass),
                                  ("forward_backward", forward_backward, 3 * one_pass)):
        for _ in range(2):  # tracing and the kernels' first-call set-up
            common.sync(function(inputs))
        seconds = []
        for _ in range(CONV_RUNS):
            start = time.perf_counter()
            common.sync(function(inputs))
            seconds.append(time.perf_counter() - start)
        rates[name] = common.spread(flops / s / 1e9 for s in seconds)
    return rates


def pipeline_throughput(images, dataset_args: dict, repeats: int) -> common.Spread:
    """Images/s of the input pipeline alone, after warm-up batches."""
    dataset, _ = make_dataset(images, **dataset_args, seed=1)
    iterator = iter(dataset)
    for _ in range(PIPELINE_WARMUP_BATCHES):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(PIPELINE_BATCHES):
            next(iterator)
        rates.append(PIPELINE_BATCHES * dataset_args["batch_size"]
                     / (time.perf_counter() - start))
    return common.spread(rates)


def time_training(step, iterator, batch_size: int, steps: int, repeats: int) -> common.Spread:
    """Images/s of `repeats` runs of `steps` train steps, batches pulled as in training."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            logs = step(next(iterator))
        common.sync(logs["L_G"])
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return common.spread(rates)


# --------------------------------------------------------------------------------------------
# Where the time goes: one profiled step
# --------------------------------------------------------------------------------------------

_OP_EVENT = re.compile(r"^([^\s:]+):([A-Za-z_]\w*)$")
# Their events span the ops they call, which have events of their own.
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


def _trace_space(step, batch):
    """(wall seconds, XSpace) of one train step under the TF profiler, or None."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="imuge-profile-")
    try:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        try:
            common.sync(step(batch)["L_G"])
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
        return wall, space
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def profile_step(step, iterator, model) -> dict | None:
    """One train step under the TF profiler: op time by component and direction, by op kind
    and by op type (percent of the op time summed over threads)."""
    try:
        traced = _trace_space(step, next(iterator))
    except Exception as error:  # noqa: BLE001 - the time split is optional, the rates are not
        common.log(f"no time split: {type(error).__name__}: {error}")
        return None
    if traced is None:
        return None
    wall, space = traced
    networks = [model.encoder.name, model.verifier.name, model.decoder.name]
    if model.use_discriminators:
        networks += [model.container_discriminator.name, model.recovery_discriminator.name]
    optimizers = {re.sub(r"_\d+$", "", opt.name)
                  for opt in (model.optimizer, model.discriminator_optimizer)}
    by_component = collections.defaultdict(collections.Counter)
    by_kind, by_type = collections.Counter(), collections.Counter()
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
                    direction = "update"  # neither forward nor backward
                elif name.startswith("gradient_tape/") or "/gradients/" in name:
                    direction = "backward"
                else:
                    direction = "forward"
                by_component[component][direction] += seconds
                if "Conv2D" in kind or "Conv2d" in kind:
                    by_kind["convolutions"] += seconds
                elif "_norm" in name:
                    by_kind["GroupNorm / InstanceNorm"] += seconds
                else:
                    by_kind["other ops"] += seconds
                by_type[kind] += seconds
    total = sum(by_kind.values())
    if not total:
        common.log("no time split: no op events in the trace")
        return None
    components = []
    for component, split in by_component.items():
        row = {"component": component, "forward": None, "backward": None,
               "total": 100 * sum(split.values()) / total}
        if not split["update"]:
            row.update(forward=100 * split["forward"] / total,
                       backward=100 * split["backward"] / total)
        components.append(row)
    return {"wall_s": wall, "op_time_s": total,
            "components": sorted(components, key=lambda row: -row["total"]),
            "by_kind": {k: 100 * v / total for k, v in by_kind.most_common()},
            "top_op_types": {k: 100 * v / total for k, v in by_type.most_common(TOP_OP_TYPES)},
            "conv_seconds": by_kind["convolutions"]}


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
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first call traces the graph)")
    return args


def load_photos(args, dataset_args):
    """(photos, description); decoded once, as training does, so make_dataset crops from
    memory."""
    if args.data:
        common.log(f"loading photos from {args.data}")
        images, stats = load_images(find_images(args.data), dataset_args["image_size"],
                                    dataset_args["load_size"])
        return images, f"{stats.loaded} photos from {args.data}"
    images = sample_photos()
    return images, f"{len(images)} bundled scikit-image photos"


def measure(args) -> dict:
    results = common.provenance()
    config = load_config(args.config, overrides=args.overrides)
    model_config = config.model
    size, batch_size = model_config.image_size, config.train.batch_size
    dataset_args = _dataset_arguments(config)
    results.update(
        config={"name": config.name, "image_size": size, "batch_size": batch_size,
                "base_filters": model_config.base_filters,
                "max_filters": model_config.max_filters, "norm": model_config.norm},
        aims={"percent_of_conv_rate": CONV_SHARE_AIM_PERCENT,
              "pipeline_ratio": PIPELINE_RATIO_AIM},
        timing={"warmup_steps": args.warmup, "runs": args.repeats, "steps_per_run": args.steps})
    common.log(f"config '{config.name}': {size} px, batch {batch_size}")

    common.log(f"reference conv: {CONV_CHANNELS}->{CONV_CHANNELS} channels, "
               f"{CONV_SIZE}x{CONV_SIZE}, batch {CONV_BATCH}")
    reference = conv_rates(CONV_CHANNELS, CONV_SIZE, CONV_BATCH)
    narrow = conv_rates(model_config.base_filters, size, batch_size)["forward_backward"]
    conv_rate = reference["forward_backward"].median
    results["conv_reference"] = {
        "kernel": CONV_KERNEL, "channels": CONV_CHANNELS, "size": CONV_SIZE, "batch": CONV_BATCH,
        "forward_backward_gflop_per_s": dataclasses.asdict(reference["forward_backward"]),
        "forward_gflop_per_s": dataclasses.asdict(reference["forward"])}
    results["conv_narrow"] = {"channels": model_config.base_filters, "size": size,
                              "batch": batch_size,
                              "forward_backward_gflop_per_s": dataclasses.asdict(narrow)}

    images, results["data"] = load_photos(args, dataset_args)
    common.log(f"input pipeline alone ({results['data']})")
    pipeline = pipeline_throughput(images, dataset_args, args.repeats)

    common.log("building and compiling the model")
    model = compile_imuge(build_imuge(config), config)
    label_model_ops(model)
    dataset, _ = make_dataset(images, **dataset_args, seed=config.data.seed)
    iterator = iter(dataset)
    step = tf.function(model.train_step)
    common.log("tracing the train step")
    start = time.perf_counter()
    graph = step.get_concrete_function(next(iterator)).graph
    results["timing"]["trace_s"] = time.perf_counter() - start

    common.log("counting FLOPs")
    top_level = profiler_flops(graph)
    results["profiler_top_level_gflop_per_image"] = (
        None if top_level is None else top_level / batch_size / 1e9)
    results["forward_passes"] = network_forward_flops(model, size)
    final_step = common.final_stage_step(config)
    stages = []
    first_stage = int(model.schedule(0)[0].numpy())
    if first_stage != LEVELS:
        stages.append((f"stage {first_stage} (start)", 0, first_stage))
    last_stage = int(model.schedule(final_step)[0])
    stages.append((f"stage {last_stage} (final)", final_step, last_stage))
    flops = {label: GraphFlops(graph, stage=stage).count(graph) for label, _, stage in stages}

    phases = []
    for label, at_step, _ in stages:
        model.optimizer.iterations.assign(at_step)
        schedule = common.describe_schedule(model, at_step)
        common.log(f"warming up {label} ({schedule})")
        for _ in range(args.warmup):
            common.sync(step(next(iterator))["L_G"])
        common.log(f"timing {label}: {args.repeats} x {args.steps} steps")
        rate = time_training(step, iterator, batch_size, args.steps, args.repeats)
        per_image = flops[label].total / batch_size
        achieved = per_image * rate.median / 1e9
        phases.append({"phase": label, "schedule": schedule,
                       "img_per_s": dataclasses.asdict(rate),
                       "s_per_step": batch_size / rate.median,
                       "gflop_per_image": per_image / 1e9,
                       "conv_percent": _percent(flops[label].conv, flops[label].total),
                       "achieved_gflop_per_s": achieved,
                       "percent_of_conv_rate": 100 * achieved / conv_rate})
    results["phases"] = phases
    results["pipeline"] = {"img_per_s": dataclasses.asdict(pipeline),
                           "ratio_to_final_stage": pipeline.median
                           / phases[-1]["img_per_s"]["median"]}

    final_label = stages[-1][0]
    common.log(f"profiling one {final_label} step")
    profile = profile_step(step, iterator, model)
    if profile:
        # The model's own convolutions' rate: their FLOPs over their share of the op time
        # applied to the wall time. Op time is summed over inter-op threads, which overlap, so
        # FLOPs over the conv op time alone would understate the rate.
        conv_wall = profile.pop("conv_seconds") / profile["op_time_s"] * profile["wall_s"]
        profile["phase"] = final_label
        profile["step_conv_gflop_per_s"] = (flops[final_label].conv / conv_wall / 1e9
                                            if conv_wall else None)
    results["profile"] = profile
    results["load_average"]["after"] = common.load_average()
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _percent_text(value) -> str:
    return "n/a" if value is None else f"{value:.0f} %"


def _share(value) -> str:
    return "" if value is None else f"{value:.1f} %"


def _shares(percents: dict) -> str:
    return ", ".join(f"{name} {value:.0f} %" for name, value in percents.items())


def render(results) -> str:
    """The `train_throughput` section of BENCHMARKS.md from the saved figures."""
    config, timing, aims = results["config"], results["timing"], results["aims"]
    reference, narrow = results["conv_reference"], results["conv_narrow"]
    pipeline, profile = results["pipeline"], results["profile"]
    conv_rate = reference["forward_backward_gflop_per_s"]
    lines = [
        "## Training throughput (`benchmarks/train_throughput.py`)",
        "",
        *common.provenance_lines(
            results,
            f"- config: `{config['name']}` ({config['image_size']} px, batch "
            f"{config['batch_size']}, base/max filters {config['base_filters']}/"
            f"{config['max_filters']}, norm {config['norm']}); data: {results['data']}"),
        "",
        f"Training: `tf.function(model.train_step)` on prefetched `make_dataset` batches, "
        f"{timing['warmup_steps']} warm-up step(s), then the median of {timing['runs']} runs "
        f"of {timing['steps_per_run']} step(s) (tracing, {timing['trace_s']:.0f} s, excluded). "
        "The final stage is measured on the same model with its step counter moved forward.",
        "",
        common.markdown_table(
            ["phase", "schedule", "img/s (median)", "range", "s/step", "GFLOP/img", "GFLOP/s",
             f"share of conv rate (aim {aims['percent_of_conv_rate']:.0f} %)"],
            [[p["phase"], f"`{p['schedule']}`", f"{p['img_per_s']['median']:.2f}",
              f"{p['img_per_s']['low']:.2f}-{p['img_per_s']['high']:.2f}",
              f"{p['s_per_step']:.2f}", f"{p['gflop_per_image']:.2f}",
              f"{p['achieved_gflop_per_s']:.1f}", f"{p['percent_of_conv_rate']:.0f} %"]
             for p in results["phases"]]),
        "",
        "FLOPs per image: walked through the traced graph and the functions it calls (only "
        "the measured stage's branch of the progressive-recovery switch); each op counted with "
        "TF's profiler registry, convolutions (forward, Conv2DBackpropInput, "
        "Conv2DBackpropFilter) analytically as 2·k²·C_in·C_out·H·W.",
    ]
    if results["profiler_top_level_gflop_per_image"] is not None:
        lines.append(f"TF's profiler on the top-level graph alone gives "
                     f"{results['profiler_top_level_gflop_per_image']:.2f} GFLOP/img for the "
                     "train step: it does not enter function bodies, so it misses the decoder "
                     "and its gradient inside the stage switch.")
    graphs = [[row["graph"], f"{row['gflop_per_image']:.2f}", _percent_text(row["conv_percent"])]
              for row in results["forward_passes"]]
    graphs += [[f"train step, {p['phase']}", f"{p['gflop_per_image']:.2f}",
                _percent_text(p["conv_percent"])] for p in results["phases"]]
    lines += [
        "",
        common.markdown_table(["graph", "GFLOP/img", "in convolutions"], graphs),
        "",
        f"Conv reference: float32 {reference['kernel']}x{reference['kernel']} Conv2D, "
        f"{reference['channels']}->{reference['channels']} channels, {reference['size']}x"
        f"{reference['size']}, batch {reference['batch']}, NHWC, median of "
        f"{conv_rate['count']}: forward+backward **{conv_rate['median']:.1f} GFLOP/s** (range "
        f"{conv_rate['low']:.1f}-{conv_rate['high']:.1f}), forward "
        f"{reference['forward_gflop_per_s']['median']:.1f} GFLOP/s. At the model's narrowest "
        f"width ({narrow['channels']}->{narrow['channels']}, {narrow['size']} px, batch "
        f"{narrow['batch']}): {narrow['forward_backward_gflop_per_s']['median']:.1f} GFLOP/s "
        "forward+backward.",
        "",
        f"Input pipeline alone: **{pipeline['img_per_s']['median']:.0f} img/s** (range "
        f"{pipeline['img_per_s']['low']:.0f}-{pipeline['img_per_s']['high']:.0f}), "
        f"{pipeline['ratio_to_final_stage']:.0f}x the final-stage training throughput "
        f"(aim {aims['pipeline_ratio']:.0f}x).",
    ]
    if profile:
        lines += [
            "",
            f"Where the time goes (one profiled {profile['phase']} step, "
            f"{profile['wall_s']:.2f} s wall, {profile['op_time_s']:.2f} s of op time summed "
            "over threads; shares of that op time):",
            "",
            common.markdown_table(
                ["component", "forward", "backward", "total"],
                [[row["component"], _share(row["forward"]), _share(row["backward"]),
                  _share(row["total"])] for row in profile["components"]]),
            "",
            f"- by op kind: {_shares(profile['by_kind'])}",
            f"- the step's convolutions ran at about {profile['step_conv_gflop_per_s'] or 0:.0f} "
            f"GFLOP/s (their FLOPs over their share of the wall time; reference conv "
            f"{conv_rate['median']:.0f} GFLOP/s)",
            f"- top op types: {_shares(profile['top_op_types'])}",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    common.measure_and_publish(SECTION, parse_args(argv), measure, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
