"""`nnship` imports only the chosen subcommand's module: help for the service never loads torch."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

STAGES = ("nnship.training", "nnship.export", "nnship.service", "nnship.loadtests", "nnship.batch")


def loaded_after(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter holds after `nnship ARGV` (help exits 0)."""
    code = (
        "import sys\nfrom nnship.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('\\n'.join(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_top_level_help_loads_no_stage():
    loaded = loaded_after(["--help"])
    assert "torch" not in loaded
    assert not {m for m in loaded if m.startswith(STAGES)}


@pytest.mark.parametrize(
    ("command", "stage"),
    [("serve", "nnship.service"), ("loadtest", "nnship.loadtests"), ("predict", "nnship.batch")],
)
def test_serve_loadtest_and_predict_help_do_not_load_torch(command, stage):
    loaded = loaded_after([command, "--help"])
    assert "torch" not in loaded
    assert stage in loaded and "nnship.training" not in loaded


def test_stage_modules_do_not_import_the_top_level_cli():
    """Stages reach run_guarded in nnship.runner; nnship.cli is the console script alone."""
    root = Path(__file__).resolve().parents[2]
    users = [
        str(p.relative_to(root))
        for folder in ("models", "training", "export", "service", "loadtests", "batch", "nnship")
        for p in sorted((root / folder).rglob("*.py"))
        if re.search(r"^\s*(from nnship\.cli import|import nnship\.cli)", p.read_text(), re.M)
    ]
    assert users == []
