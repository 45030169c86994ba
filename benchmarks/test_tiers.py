"""How long each test tier takes, run as the README says, in a clean copy of the repository.

    python benchmarks/test_tiers.py [--tiers fast slow] [--render-only]

Runs `pytest` (the fast tier) and `pytest -m slow -n 0` (the slow tier) one after the other, each in
its own subprocess from a `git worktree` of HEAD (so that edits in the checkout cannot change a
run half-way), and records for each tier its wall time, the counts pytest reports (passed,
failed, skipped, ...), the slowest tests (pytest `--durations`), and the load average before and
after: a run on busy cores is slower, and the figures say how busy they were. One run per tier:
the full suite is too long to repeat for a median here. Writes benchmarks/results/tests.json
and the `tests` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAME = "tests"  # the section of BENCHMARKS.md and benchmarks/results/tests.json
TIERS = {"fast": [], "slow": ["-m", "slow", "-n", "0"]}
TARGETS_S = {"fast": 5 * 60, "full": 15 * 60}
SLOWEST = 10
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)")
_DURATION = re.compile(r"^\s*([0-9.]+)s (call|setup|teardown)\s+(\S+)")


def summary_counts(output: str) -> dict:
    """The counts of pytest's last summary line, e.g. {'passed': 412, 'deselected': 106}."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if not lines:
        return {}
    counts = {}
    for number, kind in _COUNT.findall(lines[-1]):
        counts[kind.rstrip("s") if kind.startswith(("error", "warning")) else kind] = int(number)
    return counts


def slowest_tests(output: str, limit: int = SLOWEST) -> list[dict]:
    """The tests with the longest setup + call + teardown, from pytest's --durations table."""
    totals: dict[str, float] = {}
    for line in output.splitlines():
        match = _DURATION.match(line)
        if match:
            test = match.group(3)
            totals[test] = totals.get(test, 0.0) + float(match.group(1))
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:limit]
    return [{"test": test, "seconds": round(seconds, 1)} for test, seconds in ranked]


def run_tier(name: str, checkout: str) -> dict:
    command = [sys.executable, "-m", "pytest", *TIERS[name], "-q", "-p", "no:cacheprovider",
               "--durations=0", "--durations-min=1"]
    environment = {**os.environ, "PYTHONPATH": checkout}
    common.log(f"tier {name}: {' '.join(command[2:])}")
    load_before = common.load_average()
    start = time.perf_counter()
    child = subprocess.run(command, cwd=checkout, env=environment, capture_output=True,
                           text=True)
    seconds = time.perf_counter() - start
    output = child.stdout + child.stderr
    record = {"command": " ".join(["pytest", *TIERS[name]]), "exit_code": child.returncode,
              "seconds": round(seconds, 1), "counts": summary_counts(output),
              "slowest": slowest_tests(output), "load_before": load_before,
              "load_after": common.load_average()}
    common.log(f"tier {name}: exit {child.returncode} in {seconds:.0f} s, {record['counts']}")
    if child.returncode != 0:
        lines = output.splitlines()
        failures = next((i for i, line in enumerate(lines) if " FAILURES " in line), None)
        record["failures"] = lines[failures:failures + 200] if failures is not None else []
        record["tail"] = lines[-40:]
    return record


def measure(tiers) -> dict:
    with tempfile.TemporaryDirectory(prefix="imuge-test-tiers-") as folder:
        checkout = os.path.join(folder, "repo")
        subprocess.run(["git", "worktree", "add", "--detach", checkout, "HEAD"],
                       cwd=common.REPO_ROOT, check=True, capture_output=True)
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout,
                                    check=True, capture_output=True, text=True).stdout.strip()
            runs = {name: {**run_tier(name, checkout), "commit": commit,
                           "date": common.utc_now()} for name in tiers}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", checkout],
                           cwd=common.REPO_ROOT, capture_output=True)
    return {"date": common.utc_now(), "command": common.command_line(), "commit": commit,
            "machine": common.machine_facts(), "tiers": runs}


def _minutes(seconds) -> str:
    return f"{seconds / 60:.1f} min"


def render(results: dict) -> str:
    tiers = results["tiers"]
    rows = []
    for record in tiers.values():
        counts = ", ".join(f"{number} {kind}" for kind, number in record["counts"].items()
                           if kind not in ("deselected", "warning"))
        rows.append([f"`{record['command']}`", counts, _minutes(record["seconds"]),
                     record["exit_code"], record.get("commit", results["commit"]),
                     record["load_before"]])
    lines = ["## Test tiers (`benchmarks/test_tiers.py`)", "",
             f"Last measured {results['date']}, one run per tier, from a clean worktree of "
             f"the commit named; CPUs: {results['machine'].get('cpus', '?')} "
             f"({results['machine'].get('cpu', '')}). Load average (1, 5, 15 min) at the "
             f"start of each tier: a busy machine is slower.", "",
             common.markdown_table(["tier", "tests", "wall time", "exit", "commit",
                                    "load at start"], rows)]
    if {"fast", "slow"} <= set(tiers):
        full = tiers["fast"]["seconds"] + tiers["slow"]["seconds"]
        lines += ["", f"Both tiers (the full suite, as `.ci/run` runs it): {_minutes(full)}; "
                  f"targets: fast tier under {_minutes(TARGETS_S['fast'])}, full suite under "
                  f"{_minutes(TARGETS_S['full'])} on 2 idle cores."]
    for name, record in tiers.items():
        if record["slowest"]:
            lines += ["", f"Slowest tests of the {name} tier (setup + call + teardown):", "",
                      common.markdown_table(["test", "s"], [[f"`{item['test']}`",
                                                             item["seconds"]]
                                                            for item in record["slowest"]])]
    return "\n".join(lines)


def measure_tiers(args) -> dict:
    """The tiers asked for; a run of some tiers keeps the others' last figures (each tier
    names its commit)."""
    results = measure(args.tiers)
    kept_path = common.results_path(NAME, args.out)
    if set(args.tiers) != set(TIERS) and os.path.exists(kept_path):
        kept = common.load_results(NAME, args.out)["tiers"]
        results["tiers"] = {name: results["tiers"].get(name, kept.get(name))
                            for name in TIERS if name in results["tiers"] or name in kept}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", nargs="+", choices=sorted(TIERS), default=list(TIERS),
                        help="which tiers to run (default: both)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    common.measure_and_publish(NAME, args, measure_tiers, render)
    tiers = common.load_results(NAME, args.out)["tiers"]
    return 0 if all(record["exit_code"] == 0 for record in tiers.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
