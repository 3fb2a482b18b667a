"""Atomic file and directory writes, and sha256 of files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, expected: str) -> None:
    """Refuse a missing file, or one whose sha256 differs from the recorded one, naming it."""
    from nnship.errors import NnshipError

    if not path.is_file():
        raise NnshipError(f"{path}: missing")
    actual = sha256_file(path)
    if actual != expected:
        raise NnshipError(
            f"{path}: sha256 mismatch (recorded {expected[:12]}…, file has {actual[:12]}…); "
            "the file was modified or truncated"
        )


def read_record(path: Path, fmt: str, missing_hint: str) -> dict[str, Any]:
    """A JSON record file with a `format` field, refused in one line for each way it can be wrong."""
    from nnship.errors import NnshipError

    if not path.is_file():
        raise NnshipError(f"{path}: missing ({missing_hint})")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NnshipError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise NnshipError(f"{path}: not an nnship record of format {fmt!r}")
    return record


def holds_record(folder: Path, name: str, fmt: str) -> bool:
    """Whether `folder` is a real directory whose `name` file is a record of format `fmt`."""
    try:
        record = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return False
    return folder.is_dir() and isinstance(record, dict) and record.get("format") == fmt


def current_umask() -> int:
    """The process umask: from /proc where Linux shows it, else by setting it and putting it back.

    psutil does not expose the umask, and Python can only read it by changing it; /proc reads it
    without the moment in which a thread creating a file would get the temporary mask."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plainly created file gets: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a plainly created folder gets: 0777 less the umask (0755 under umask 022)."""
    return 0o777 & ~current_umask()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) then rename tmp_path over path; the temp file never outlives a failure.

    The file ends with the umask's usual mode, not mkstemp's private 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


@contextlib.contextmanager
def staged_dir(
    final: str | Path, replaceable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Build a directory under a temp name beside `final`; move it into place only on success.

    An existing `final` is replaced only when `replaceable(final)` says so at that very moment (it
    may have changed since the work began); the old folder is moved to a fresh private name first,
    so nothing else beside `final` is ever touched. The folder gets the umask's usual mode."""
    from nnship.errors import NnshipError

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        os.chmod(tmp, dir_mode())
        yield tmp
        if final.exists() or final.is_symlink():
            if replaceable is None:
                raise NnshipError(f"{final} already exists; nothing was replaced")
            if final.is_symlink() or not replaceable(final):
                raise NnshipError(f"{final} is not nnship's to replace; nothing was replaced")
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
