"""Every command README.md shows in a shell block runs as written, or the block says why it cannot run here.

A ```bash, ```sh, ```shell or ```console block runs in a fresh folder (the repository's top-level folders linked
in, so `recipes/...` and `plugins/...` resolve; what a command writes, such as `runs/`, stays there) with this
environment's `xr0` first on PATH. A block that cannot run on a CPU in seconds carries a marker on the line just
before it: `<!-- readme-test: skip (REASON) -->` (slow, GPU, network, a template with placeholders). A fenced block
without a language fails too, so a command block cannot hide as plain text.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "README.md"
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```+)(\S*)\s*$")
MARK = re.compile(r"^\s*<!--\s*readme-test:(.*?)-->\s*$")
SKIP = re.compile(r"skip \((.*\S.*)\)")
TIMEOUT_S = 280  # per block; the slowest one (a validate and three tiny fits) took 30-41 s on 2 busy cores


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    mark: str | None  # the marker's text, when the line before the fence is one

    def commands(self) -> str:
        """What bash runs: the block, or a console block's `$ ` lines."""
        if self.lang != "console":
            return self.text
        return "\n".join(x[2:] for x in self.text.splitlines() if x.startswith("$ "))


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with its language and the marker before it."""
    lines, out, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == ticks), len(lines))
        body = [x[len(indent):] if x.startswith(indent) else x.lstrip() for x in lines[i + 1:end]]
        mark = MARK.match(lines[i - 1]) if i > 0 else None
        out.append(Block(i + 1, lang, "\n".join(body), mark.group(1).strip() if mark else None))
        i = end + 1
    return out


def runnable(path: Path = DOC) -> list[Block]:
    return [b for b in blocks(path) if b.lang in SHELL and b.mark is None]


def test_every_shell_block_runs_here_or_says_why_not():
    problems = []
    for b in blocks(DOC):
        where = f"{DOC.name}:{b.line}"
        if not b.lang:
            problems.append(f"{where}: a fenced block without a language; write ```text, or ```bash for commands")
        elif b.mark is not None and (b.lang not in SHELL or not SKIP.fullmatch(b.mark)):
            problems.append(f"{where}: marker {b.mark!r}: use `skip (REASON)`, on a shell block only")
    assert not problems, "\n".join(problems)
    assert len(runnable()) >= 2  # the parser sees the blocks (the recipes and deploy examples run)


@pytest.mark.timeout(TIMEOUT_S + 20)
@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"{DOC.name}:{b.line}")
def test_a_readme_block_runs_as_written(block: Block, tmp_path: Path):
    for top in ROOT.iterdir():
        if top.name not in {".git", ".venv", "runs"}:
            (tmp_path / top.name).symlink_to(top)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "XR0_DATA": str(tmp_path / "xr0_data")}
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.commands()], check=False, cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, (f"{DOC.name}:{block.line} failed (exit {r.returncode}); mark it "
                               f"`<!-- readme-test: skip (REASON) -->` only if it cannot run on a CPU in seconds\n"
                               f"{block.commands()}\n--- output ---\n{(r.stdout + r.stderr)[-4000:]}")
