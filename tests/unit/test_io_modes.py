"""Atomic writes and staged folders get the umask's usual modes and never replace by surprise."""

import os
import stat

import pytest

from nnship.errors import NnshipError
from nnship.io import atomic_write_json, plain_dir_mode, staged_dir


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_follow_the_umask(tmp_path, umask):
    assert plain_dir_mode(tmp_path) == 0o777 & ~umask
    with staged_dir(tmp_path / "run") as tmp:
        atomic_write_json(tmp / "a.json", {"x": 1})
        (tmp / "sub").mkdir()
    assert _mode(tmp_path / "run") == 0o777 & ~umask == _mode(tmp_path / "run" / "sub")
    assert _mode(tmp_path / "run" / "a.json") == 0o666 & ~umask


def test_staged_dir_refuses_an_existing_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep").write_text("x")
    with (
        pytest.raises(NnshipError, match="already exists; nothing was replaced"),
        staged_dir(tmp_path / "run") as tmp,
    ):
        (tmp / "new").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (tmp_path / "run" / "keep").read_text() == "x"


def test_staged_dir_replaces_only_what_is_replaceable_at_the_end(tmp_path):
    """The check runs when the folder is replaced, and nothing beside it (`.run.old`) is touched."""
    final, beside = tmp_path / "run", tmp_path / ".run.old"
    final.mkdir()
    (final / "keep").write_text("x")
    beside.mkdir()
    (beside / "mine").write_text("y")
    with (
        pytest.raises(NnshipError, match="not nnship's to replace"),
        staged_dir(final, replaceable=lambda p: False) as tmp,
    ):
        (tmp / "new").write_text("z")
    assert (final / "keep").read_text() == "x"
    with staged_dir(final, replaceable=lambda p: (p / "keep").exists()) as tmp:
        (tmp / "new").write_text("z")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert (beside / "mine").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.old", "run"]
