"""The README's examples run as written."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_examples_run(index):
    code = _blocks("python")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def _shell_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():  # join continued lines
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def test_shell_examples_use_existing_commands_configs_and_targets():
    from detkit.cli import LIGHTNING_COMMANDS, resolve_config

    known = set(LIGHTNING_COMMANDS) | {"evaluate", "analyze", "proposals", "configs", "export"}
    for line in _shell_lines():
        words = shlex.split(line)
        if words[0] == "make":
            result = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True)
            assert result.returncode == 0, f"{line}: {result.stderr}"
        elif words[0] == "detkit":
            assert words[1] in known, line
            for word in words:
                if word.startswith("configs/"):
                    assert (ROOT / word).is_file(), f"{line}: {word} does not exist"
            for flag, value in zip(words, words[1:]):
                if flag == "--config":
                    assert Path(resolve_config(value)).is_file(), f"{line}: no config {value}"


def test_cli_help_and_override_parsing():
    run = [sys.executable, "-m", "detkit.cli"]
    out = subprocess.run([*run, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "evaluate" in out.stdout
    # the override example parses and resolves (print_config does not train)
    line = next(x for x in _shell_lines() if "--trainer.max_epochs 2" in x)
    args = shlex.split(line)[1:] + ["--print_config"]
    out = subprocess.run([*run, *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "max_epochs: 2" in out.stdout and "batch_size: 8" in out.stdout


@pytest.mark.slow  # > 6 s: `make test-all`
def test_referenced_scripts_exist_and_accept_the_flags_shown():
    commands = set(re.findall(r"python ((?:benchmarks|scripts)/\w+\.py)([^`\n]*)", README))
    assert commands, "the README shows no script commands"
    for script, flags in commands:
        assert (ROOT / script).is_file(), script
        help_text = subprocess.run(
            [sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300
        ).stdout
        for flag in re.findall(r"--[\w-]+", flags):
            assert flag in help_text, f"{script} does not take {flag}"
