"""The README's code blocks: each shell or Python block runs here, or says why it cannot.

A block is marked by the line right before its fence: `<!-- readme-test: skip (REASON) -->`. Every
fence names its language; `text` blocks are usage and output, not code. The blocks that run are run
as written, in a fresh folder with their own model store, except that `nnship train` trains for
EPOCHS epochs instead of the recipe's (the commands, flags and paths are the README's)."""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
CODE = {"bash", "sh", "shell", "python"}
NOT_CODE = {"text"}
MARKER = re.compile(r"<!-- readme-test: (?P<verb>\w+)(?: \((?P<reason>.*)\))? -->$")
EPOCHS = 2


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    skip: str | None  # the reason, when marked to skip


def blocks(text: str) -> list[Block]:
    """The fenced blocks with their language and marker (a line of its own, right before the fence)."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        if MARKER.match(lines[i]):
            assert i + 1 < len(lines) and lines[i + 1].startswith("```"), (
                f"README.md:{i + 1}: a readme-test marker must sit right before a fence"
            )
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            mark = MARKER.match(lines[i - 1]) if i else None
            assert not mark or (mark["verb"] == "skip" and mark["reason"]), (
                f"README.md:{i}: the marker is `<!-- readme-test: skip (REASON) -->`"
            )
            found.append(
                Block(
                    i + 1,
                    lines[i][3:].strip(),
                    "\n".join(lines[i + 1 : end]),
                    mark and mark["reason"],
                )
            )
            i = end
        i += 1
    return found


def runnable() -> list[Block]:
    return [b for b in blocks(README.read_text()) if b.lang in CODE and not b.skip]


def test_every_block_is_run_or_skipped_with_a_reason():
    found = blocks(README.read_text())
    assert found, "no code blocks found"
    for b in found:
        assert b.lang in CODE | NOT_CODE, f"README.md:{b.line}: a fence names its language"
        assert not (b.skip and b.lang in NOT_CODE), f"README.md:{b.line}: text is never run"
    assert runnable(), "no README block runs"


def test_the_marker_rules_catch_an_unmarked_or_bare_block():
    assert blocks("<!-- readme-test: skip (serves forever) -->\n```bash\nmake demo\n```\n")[0].skip
    assert blocks("```bash\nls\n```\n")[0].skip is None
    with pytest.raises(AssertionError, match="the marker is"):
        blocks("<!-- readme-test: skip -->\n```bash\nmake demo\n```\n")
    with pytest.raises(AssertionError, match="right before a fence"):
        blocks("<!-- readme-test: skip (x) -->\n\n```bash\nls\n```\n")


@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"README.md:{b.line}")
def test_block_runs(block, tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    if block.lang == "python":
        cmd = [sys.executable, "-c", block.body]
    else:
        body = re.sub(r"\bnnship train\b", f"nnship train --epochs {EPOCHS}", block.body)
        cmd = ["bash", "-euo", "pipefail", "-c", body]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"README.md:{block.line}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    )
