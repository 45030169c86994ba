"""The reliability soak: training, the model server and the CLI, tried as an attacker and a
careless user would.

    python benchmarks/reliability.py                 # all three parts
    python benchmarks/reliability.py --parts server  # one part; the others' figures are kept

- `training` (benchmarks/reliability_training.py): kill -9 during training, also during saves;
  divergence; determinism; a damaged latest checkpoint;
- `server` (benchmarks/reliability_server.py): 200 concurrent requests and each hostile request,
  with the server's memory;
- `cli` (benchmarks/reliability_cli.py): kill -9 during CLI batches, then `--skip-existing`.

Each part's figures go to benchmarks/results/reliability.json (merged with the parts not run),
and the `reliability` section of BENCHMARKS.md is rendered from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (quietens TensorFlow before it is imported)

PARTS = ("training", "server", "cli")
RESULTS = os.path.join(common.REPO_ROOT, "benchmarks", "results", "reliability.json")


def _run_part(name, args):
    if name == "training":
        import reliability_training

        return reliability_training.run(rounds=args.rounds)
    if name == "server":
        import reliability_server

        return reliability_server.run(None)
    import reliability_cli

    return reliability_cli.run(None)


def _flat_rows(values, prefix=""):
    rows = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flat_rows(value, name + " / ")
        elif isinstance(value, list):
            if value and not isinstance(value[0], (dict, list)):
                rows.append([name, ", ".join(str(v) for v in value)])
        else:
            rows.append([name, str(value)])
    return rows


def render_training(figures) -> str:
    kills = figures["kills"]
    lines = [
        f"- **kill -9 x {kills['rounds']}** of `python train.py` (smoke config, a checkpoint "
        f"every step): {kills['killed_while_saving']} kills landed while a checkpoint was "
        f"being written; {kills['resumed']} of {kills['rounds'] - 1} restarts resumed, "
        f"{kills['went_back']} went back before the last saved step, {kills['tracebacks']} "
        f"tracebacks; the final run exited {kills['final_run_exit']} "
        f"({'finished' if kills['final_run_finished'] else 'did not finish'}); temporary "
        f"folders left: {kills['leftovers']}.",
    ]
    for name, case in figures["divergence"].items():
        lines.append(
            f"- **divergence** (`train.learning_rate=1e30`, {name}): exit {case['exit']}, "
            f"latest checkpoint step {case['latest_checkpoint_step']}, all finite: "
            f"{case['latest_checkpoint_finite']}, traceback: {case['traceback']}; said: "
            f"`{case['message']}`")
    same = figures["determinism"]
    lines.append(
        f"- **determinism**: two runs with one seed, separate processes: "
        f"{same['same_seed_differing']} of {same['tensors']} checkpoint tensors differ; a "
        f"run with another seed: {same['other_seed_differing']} differ.")
    damaged = figures["damaged_checkpoint"]
    lines.append(
        f"- **damaged latest checkpoint** (ckpt-4 truncated, state file garbled): exit "
        f"{damaged['exit']}, resumed from step {damaged['resumed_from']}, finished: "
        f"{damaged['finished']}; said: {'; '.join(damaged['said']) or 'nothing'}.")
    lines.append(f"\nTraining part: {figures['seconds'] / 60:.0f} min.")
    return "\n".join(lines)


def render_server(figures) -> str:
    burst, retrying = figures["burst"], figures["burst_retrying"]
    memory, large = figures["memory_mb"], figures["large_photos"]
    rows = [
        ["one predict of a small photo",
         f"median {figures['one_predict_ms']['median']} ms of repeated runs"],
        [f"{burst['clients']} clients at once",
         f"{burst['ok']} served, {burst['busy_503']} got 503 ({burst['busy_with_retry_after']} "
         f"with Retry-After), {burst['other']} other; served latency median "
         f"{burst['latency_ms_ok']['median']:.0f} ms, p95 {burst['latency_ms_ok']['p95']:.0f} ms"],
        [f"{retrying['clients']} clients at once, retrying after 503",
         f"{retrying['ok']} served in {retrying['wall_s']} s; median "
         f"{retrying['latency_ms_ok']['median']:.0f} ms, p95 "
         f"{retrying['latency_ms_ok']['p95']:.0f} ms"],
        [f"{large['requests']} requests of {large['photos_per_request']} photos of "
         f"{large['photo_size']}", f"statuses {large['statuses']}; RSS {large['rss_before_mb']}"
         f" -> peak {large['peak_mb']} -> {large['rss_after_mb']} MB"],
    ]
    for name, case in figures["hostile"].items():
        if name == "slow_loris":
            threads = case["server_threads"]
            text = (f"{case['connections']} connections that never send their body: "
                    f"{case['refused_503_at_once']} got 503 at once, "
                    f"{case['held_then_closed_by_server']} answered 408 and closed after "
                    f"{case['held_closed_after_s']['first']}-{case['held_closed_after_s']['last']}"
                    f" s, {case['never_closed']} never closed; threads {threads['before']} -> "
                    f"{threads['while_held']} -> {threads['after']}")
        else:
            text = str(case.get("status"))
            if "seconds" in case:
                text += f" in {case['seconds'] * 1000:.0f} ms"
            if case.get("file_bytes"):
                text += f" (a {case['file_bytes']}-byte file)"
            if case.get("error"):
                text += f": {case['error']}"
            details = [f"{k.replace('_', ' ')} {v}" for k, v in case.items()
                       if isinstance(v, bool) or k == "where"]
            if details:
                text += "; " + ", ".join(details)
        if "health_after" in case:
            text += f"; health check after it: {case['health_after']}"
        rows.append([name.replace("_", " "), text])
    for name, case in figures.get("graph_check", {}).items():
        rows.append([f"{name.replace('_', ' ')}, the exported graph alone",
                     f"{case['outcome']} in {case['seconds'] * 1000:.0f} ms, memory +"
                     f"{case['peak_growth_mb']} MB"])
    still = figures["still_serving"]
    rows.append(["afterwards", f"health {still['health']}, predict {still['predict']} "
                               f"({still['verdict']})"])
    return (common.markdown_table(["request", "answer"], rows)
            + f"\n\nServer memory (RSS): {memory['baseline_rss']} MB at start, "
              f"{memory['burst_peak']} MB peak during the burst, {memory['after_burst_rss']} MB "
              f"after it, {memory['after_everything_rss']} MB after everything "
              f"(+{memory['baseline_growth']} MB, mostly after the large photos).")


def render_cli(figures) -> str:
    rows = []
    for name, command in figures["commands"].items():
        rows.append([f"`imuge {name}`", command["kills"], command["resumes"],
                     command["kills_with_some_outputs_written"],
                     command["broken_outputs_after_kills"],
                     command["incomplete_photos_after_kills"],
                     command["partials_left_by_kills"], command["outputs_checked"],
                     command["broken_outputs"], command["leftovers_found"],
                     command["exit_code_mismatches"]])
    table = common.markdown_table(
        ["command", "kills", "resumes", "kills after some outputs", "broken after a kill",
         "photos half-written after a kill", ".partial left by kills", "outputs checked",
         "broken after resume", "leftovers after resume", "exit code differs"], rows)
    return (f"{figures['photos']} photos ({figures['photo_source']}), {figures['rounds']} "
            f"rounds per command, kills at random moments of the batch, each resumed with "
            f"`--skip-existing` (sometimes killed again); outputs compared byte for byte with "
            f"an uninterrupted run.\n\n{table}\n\nCLI part: {figures['seconds'] / 60:.0f} min.")


def render_generic(figures) -> str:
    return common.markdown_table(["figure", "value"], _flat_rows(figures))


RENDERERS = {"training": render_training, "server": render_server, "cli": render_cli}


def render(results) -> str:
    parts = []
    for name in PARTS:
        if name not in results:
            continue
        figures = results[name]
        body = RENDERERS.get(name, render_generic)(figures["figures"])
        parts.append(f"**{name}** (measured {figures['measured']}, `{figures['command']}`)\n\n"
                     f"{body}")
    machine = next(iter(results.values()))["machine"] if results else {}
    return ("How to reproduce: `python benchmarks/reliability.py` (or `--parts training`, "
            "`server`, `cli`).\n\nMachine: " + ", ".join(f"{k} {v}" for k, v in machine.items())
            + "\n\n" + "\n\n".join(parts))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default: {','.join(PARTS)})")
    parser.add_argument("--rounds", type=int, default=20,
                        help="kill -9 rounds of the training part (default: 20)")
    parser.add_argument("--render-only", action="store_true",
                        help="run nothing; rewrite the BENCHMARKS.md section from the results "
                             "file")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave BENCHMARKS.md and the results file alone")
    args = parser.parse_args(argv)
    chosen = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")

    results = {}
    if os.path.exists(RESULTS):
        with open(RESULTS, encoding="utf-8") as stream:
            results = json.load(stream)
    if args.render_only:
        common.update_section("reliability", render(results))
        return 0
    for name in chosen:
        common.log(f"part {name}")
        results[name] = {"figures": _run_part(name, args), "measured": common.utc_now(),
                         "command": common.command_line(), "machine": common.machine_facts()}
        print(json.dumps({name: results[name]["figures"]}, indent=2, default=str))
        if not args.no_write:
            # Written after each part, so a later part's failure keeps what was measured.
            os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
            from imuge_tf.io import write_text_atomic

            write_text_atomic(RESULTS, json.dumps(results, indent=2, default=str), force=True)
            common.update_section("reliability", render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
