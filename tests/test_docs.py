"""The README against the code: every `imuge` command and flag it names exists, the training
table lists exactly the flags of `python train.py`, the quick start is two commands, and the
CLI flow runs as written on folders (one real subprocess per command: marked slow)."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import test_cli
from PIL import Image

from imuge_tf import cli
from imuge_tf.cli import parser as cli_parser

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SHELLS = ("bash", "sh", "shell", "console")
SEPARATORS = ("&&", "||", ";", "|")
FLOW_MARKER = "<!-- cli-flow"
model_dir = test_cli.model_dir  # the same fixture


def readme() -> str:
    with open(README, encoding="utf-8") as stream:
        return stream.read()


def section(text, title):
    """The text under the heading `title` (any level), up to the next heading of that level
    or above."""
    match = re.search(rf"^(#+) {re.escape(title)}\s*$", text, re.M)
    assert match, f"README has no section {title!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def code_blocks(text):
    """(language, body) of each fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)


def command_lines(body):
    """The shell commands of a code block: one per line (continuations joined), comments and
    blank lines left out."""
    joined = body.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def commands_in(line):
    """The simple commands of one shell line as token lists, environment assignments before a
    command left out."""
    commands, current = [], []
    for token in shlex.split(line, comments=True):
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    stripped = []
    for tokens in commands:
        while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
            tokens = tokens[1:]
        if tokens:
            stripped.append(tokens)
    return stripped


def named_commands(text):
    """Every `imuge ...` and `python train.py ...` the text names, as token lists: from its
    shell code blocks and from inline code spans."""
    found = []
    for language, body in code_blocks(text):
        if language in SHELLS:
            for line in command_lines(body):
                found += commands_in(line)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    for span in re.findall(r"`((?:imuge|python train\.py)(?: [^`]*)?)`", prose):
        found += commands_in(span)
    return [tokens for tokens in found
            if tokens[0] == "imuge" or tokens[:2] == ["python", "train.py"]]


def _flags(tokens):
    return [token.split("=", 1)[0] for token in tokens if token.startswith("--")]


def problems_with(commands, parser=None, train_parser=None):
    """What is wrong with `commands` (token lists) against the parsers: unknown commands and
    flags, as readable lines."""
    parser = parser or cli.build_parser()
    train_parser = train_parser or cli.build_train_parser()
    subcommands = cli_parser.subcommands(parser)
    problems = []
    for tokens in commands:
        shown = " ".join(tokens)
        if tokens[0] == "python":
            known = train_parser._option_string_actions
            problems += [f"{shown}: train.py has no {flag}" for flag in _flags(tokens)
                         if flag not in known]
            continue
        rest = tokens[1:]
        while rest and rest[0].startswith("-"):
            if rest[0] not in parser._option_string_actions:
                problems.append(f"{shown}: imuge has no global flag {rest[0]}")
            rest = rest[1:]
        if not rest or not re.fullmatch(r"[a-z][a-z-]*", rest[0]):
            continue  # `imuge --help`, or a placeholder such as COMMAND
        command = subcommands.get(rest[0])
        if command is None:
            problems.append(f"{shown}: no command {rest[0]}")
            continue
        known = {**parser._option_string_actions, **command._option_string_actions}
        problems += [f"{shown}: {rest[0]} has no {flag}" for flag in _flags(rest)
                     if flag not in known]
    return problems


def test_readme_names_only_commands_and_flags_that_exist():
    commands = named_commands(readme())
    imuge = [tokens for tokens in commands if tokens[0] == "imuge"]
    assert len(imuge) >= 12 and len(commands) - len(imuge) >= 3, commands
    assert problems_with(commands) == []
    # Every command is shown in use at least once.
    used = {tokens[1] for tokens in imuge if len(tokens) > 1}
    assert set(cli_parser.subcommands(cli.build_parser())) <= used


def test_the_check_finds_unknown_commands_and_flags():
    text = """
```bash
imuge verify photos/ --out reports/ --no-such-flag   # a comment --not-a-flag
imuge frobnicate photos/
imuge --loud verify x
TF_CONFIG='{"a": 1}' python train.py --config smoke --epochs 3 && imuge demo
```
Inline: `imuge tamper x --out y --mask z`, and `imuge COMMAND --help` is a placeholder.
"""
    commands = named_commands(text)
    assert len(commands) == 7
    assert problems_with(commands) == [
        "imuge verify photos/ --out reports/ --no-such-flag: verify has no --no-such-flag",
        "imuge frobnicate photos/: no command frobnicate",
        "imuge --loud verify x: imuge has no global flag --loud",
        "python train.py --config smoke --epochs 3: train.py has no --epochs",
        "imuge tamper x --out y --mask z: tamper has no --mask",
    ]


def test_training_table_lists_exactly_the_flags_of_train_py():
    rows = re.findall(r"^\| `(--[a-z-]+)", section(readme(), "Training"), re.M)
    assert len(rows) >= 8, rows
    flags = {option for action in cli.build_train_parser()._actions
             for option in action.option_strings if option.startswith("--")} - {"--help"}
    assert set(rows) == flags


def test_quick_start_is_two_commands():
    blocks = code_blocks(section(readme(), "Quick start"))
    lines = [line for language, body in blocks if language in SHELLS
             for line in command_lines(body)]
    assert len(lines) == 2, lines
    assert any(["imuge", "demo"] in commands_in(line) for line in lines), lines


def readme_flow():
    """The commands of the README's CLI flow, the code block after its marker comment."""
    text = readme()
    start = text.find(FLOW_MARKER)
    assert start >= 0, "README has no CLI flow marker"
    language, body = code_blocks(text[start:])[0]
    assert language in SHELLS
    return [tokens for line in command_lines(body) for tokens in commands_in(line)]


def test_readme_flow_goes_from_photos_to_restored_photos_on_folders():
    flow = readme_flow()
    assert [tokens[:2] for tokens in flow] == [["imuge", "immunize"], ["imuge", "tamper"],
                                               ["imuge", "verify"], ["imuge", "recover"]]
    immunize, tamper, verify, recover = flow

    def out(tokens):
        return tokens[tokens.index("--out") + 1]

    assert all(tokens[2].endswith("/") for tokens in flow), flow  # folders, each step
    assert tamper[2] == out(immunize)
    assert verify[2] == recover[2] == out(tamper)


@pytest.mark.slow
def test_readme_flow_runs_as_written(model_dir, tmp_path):
    """immunize -> tamper -> verify -> recover on a folder of three photos, each command
    exactly as in the README (with the test model added where a command takes --model)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ("beach", "city", "forest")
    for index, name in enumerate(names):
        Image.fromarray(test_cli.fake_photos.calm_photo(192, 192, index)).save(
            photos / f"{name}.png")
    subcommands = cli_parser.subcommands(cli.build_parser())
    results = {}
    for tokens in readme_flow():
        command = tokens[1]
        extra = ["--model", str(model_dir)] if "--model" in (
            subcommands[command]._option_string_actions) else []
        results[command] = subprocess.run(
            [sys.executable, "-m", "imuge_tf.cli", *tokens[1:], *extra], cwd=tmp_path,
            capture_output=True, text=True, env=test_cli.ENV, timeout=600)
        assert results[command].returncode in (0, cli.EXIT_TAMPERED), (
            command, results[command].stderr)

    assert sorted(os.listdir(tmp_path / "tampered")) == [f"{n}.donor.png" for n in names]
    assert sorted(os.listdir(tmp_path / "tampered-masks")) == [
        f"{n}.donor.true-mask.png" for n in names]
    # verify read the tampered photos only, not their true masks, and found every tamper.
    assert results["verify"].returncode == cli.EXIT_TAMPERED, results["verify"].stdout
    reports = sorted(name for name in os.listdir(tmp_path / "reports")
                     if name.endswith(".json"))
    assert reports == [f"{n}.donor.json" for n in names]
    verdicts = {}
    for name in reports:
        with open(tmp_path / "reports" / name, encoding="utf-8") as stream:
            report = json.load(stream)
        assert "mask" not in os.path.basename(report["input"])
        verdicts[name] = report["verdict"]
    assert set(verdicts.values()) == {"tampered"}, verdicts
    assert "not_immunized" not in results["verify"].stdout.replace("0 not immunized", "")
    restored = sorted(os.listdir(tmp_path / "restored"))
    assert restored == [f"{n}.donor.recovered.png" for n in names]
    # Tampered photos are recovered (the test model's decoder paints grey: not a quality check).
    tampered = np.asarray(Image.open(tmp_path / "tampered" / "beach.donor.png"))
    recovered = np.asarray(Image.open(tmp_path / "restored" / "beach.donor.recovered.png"))
    assert recovered.shape == tampered.shape and (recovered != tampered).any()
