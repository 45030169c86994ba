"""The commands that run a whole job rather than a batch of photos: train, evaluate, demo,
export and serve."""

from __future__ import annotations

import os
import sys

from imuge_tf.cli import batch
from imuge_tf.cli.batch import Reporter, find_inputs, print_result
from imuge_tf.cli.errors import EXIT_OK, CommandError, one_line

DEFAULT_DEMO_DIR = "imuge-demo"
# `imuge demo` writes this file into its folder first: a folder holding it is a demo's own,
# which the next demo may overwrite without --force.
DEMO_MARKER = ".imuge-demo"


# ---------------------------------------------------------------------------------------------
# train


def run_train(args) -> int:
    from imuge_tf.config import load_config
    from imuge_tf.samples import sample_photos
    from imuge_tf.training import train

    config = load_config(args.config, args.overrides)
    workdir = args.workdir or os.path.join("runs", config.name)
    images = args.data if args.data is not None else sample_photos()
    train(config, images, workdir, strategy_name=args.strategy,
          verbose=0 if args.quiet else "auto", init_from=args.init_from)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# evaluate / demo


def _check_results_folder(path, force, marker):
    """Refuses an output folder that already holds results (its `marker` file), unless
    `force`."""
    if force or not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise CommandError(f"--out {path} exists and is not a folder")
    if os.path.exists(os.path.join(path, marker)):
        raise CommandError(f"output folder {path} already holds results ({marker}); use "
                           "--force to overwrite them")


def _scalars(mapping, prefix=""):
    """`key: value` lines for the numbers and strings of a nested summary."""
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines += _scalars(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"  {prefix}{key}: {shown}")
    return lines


def run_evaluate(args) -> int:
    if not os.path.exists(args.data):
        raise CommandError(f"--data {args.data}: no such file or folder")
    files, problems = find_inputs([args.data])
    if problems:
        raise CommandError(problems[0][1])
    _check_results_folder(args.out, args.force, marker="results.json")
    imuge = batch.load_model(args)
    from imuge_tf import evaluation

    reporter = Reporter(args, "evaluate")
    try:
        summary = evaluation.run_evaluation(
            imuge, [path for path, _ in files], args.out, limit=args.limit, seed=args.seed,
            quick=args.quick, size=args.size, progress=reporter.show_progress)
    except ValueError as error:  # unusable photos or arguments, as run_evaluation says
        raise CommandError(one_line(error)) from None
    text = evaluation.format_table(summary).rstrip("\n") + "\n"
    text += f"evaluation written to {args.out}"
    print_result(args, "evaluate", {"out": args.out, "summary": summary}, text)
    return EXIT_OK


def check_demo_folder(path, force):
    """Refuses a demo's --out unless it is new, empty, an earlier demo's (it holds
    DEMO_MARKER) or `force` is given: the demo overwrites its own files only."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise CommandError(f"--out {path} exists and is not a folder")
    if force or os.path.exists(os.path.join(path, DEMO_MARKER)) or not os.listdir(path):
        return
    raise CommandError(f"--out {path} holds files that `imuge demo` did not write; use "
                       "--force to write the demo there anyway")


def _claim_demo_folder(path):
    batch.make_folder(path)
    with open(os.path.join(path, DEMO_MARKER), "w", encoding="utf-8") as marker:
        marker.write("A folder written by `imuge demo`: the next demo into it overwrites "
                     "its files.\n")


def run_demo(args) -> int:
    check_demo_folder(args.out, args.force)
    imuge = batch.load_model(args)
    from imuge_tf import demo

    _claim_demo_folder(args.out)
    reporter = Reporter(args, "demo")
    metrics = demo.run_demo(imuge, args.out, progress=reporter.show_progress)
    print_result(args, "demo", {"out": args.out, "metrics": metrics},
                 "\n".join([f"demo written to {args.out}", *_scalars(metrics)]))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# export / serve


def run_export(args) -> int:
    from imuge_tf.export import ExportError, check_out_dir, export_model, parse_camera_size

    try:
        # Refuse an output folder or camera size before the (slow) model load.
        check_out_dir(os.path.abspath(args.out), args.force)
        camera_size = parse_camera_size(args.camera_size) if args.camera_size else None
    except (ExportError, ValueError) as error:
        raise CommandError(one_line(error)) from None
    imuge = batch.load_model(args)
    reporter = Reporter(args, "export")

    def progress(message):
        if reporter.show_progress:
            print(f"export: {message}", file=sys.stderr, flush=True)

    try:
        manifest = export_model(imuge, args.out, force=args.force, int8=not args.no_int8,
                                camera_size=camera_size, progress=progress)
    except ExportError as error:
        raise CommandError(one_line(error)) from None
    print_result(args, "export", {"out": args.out, "manifest": manifest},
                 "\n".join(_export_lines(args.out, manifest)))
    return EXIT_OK


def _export_lines(out, manifest):
    encoder = manifest["encoder"]
    lines = [f"exported to {out} (working size {manifest['image_size']})",
             f"  encoder SavedModel: {encoder['saved_model']}"]
    for variant, record in encoder["tflite"].items():
        error = record["residual_error"]
        lines.append(f"  encoder TFLite {variant}: {record['file']} ({record['bytes']:,} bytes; "
                     f"residual error max {error['max_levels']:.3g} / p99 "
                     f"{error['p99_levels']:.2g} levels vs Keras)")
    for variant, record in encoder["withheld"].items():
        lines.append(f"  encoder TFLite {variant}: not shipped ({record['reason']})")
    if "camera" in manifest:
        camera = manifest["camera"]
        lines.append(f"  camera TFLite (whole immunization, uint8 in and out): {camera['file']} "
                     f"({camera['bytes']:,} bytes; within {camera['parity']['max_levels']} "
                     "level(s) of Imuge.immunize)")
    serving = manifest["serving"]
    lines.append(f"  TF Serving model: {serving['version_dir']} (signatures "
                 f"{', '.join(serving['signatures'])}); serving/models.config, "
                 "serving/batching_parameters.txt")
    return lines


def run_serve(args) -> int:
    from imuge_tf.serve import serve

    def ready(server, grpc_port):
        text = (f"serving model '{server.model.name}' version {server.model.version} from "
                f"{server.model.path}\n  REST: {server.url}/v1/models/{server.model.name}")
        if grpc_port is not None:
            text += f"\n  gRPC: {server.server_address[0]}:{grpc_port}"
        print(text + "\n(Ctrl-C stops it)", flush=True)

    try:
        serve(args.model_dir, host=args.host, port=args.port, grpc_port=args.grpc_port,
              max_body_bytes=args.max_body_mb * 1024 * 1024, quiet=args.quiet, ready=ready,
              max_instances=args.max_instances)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return EXIT_OK
