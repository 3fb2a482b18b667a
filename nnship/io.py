"""Atomic file and directory writes, and sha256 of files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
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


def plain_dir_mode(parent: Path) -> int:
    """The mode a folder created plainly in `parent` gets (0777 less the umask), read by creating one.

    Neither Python nor psutil reads the umask without changing it, and changing it, even for a
    moment, would give a file another thread creates meanwhile the wrong mode."""
    probe = parent / f".mode-{secrets.token_hex(8)}"
    os.mkdir(probe, 0o777)
    try:
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.rmdir()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) then rename tmp_path over path; the temp file never outlives a failure.

    The temp file is created with mode 0666, which the kernel narrows by the umask; that mode is put
    back after `write` (some writers replace the file with a private one), so the file ends with the
    mode any plainly created file gets (0644 under umask 022), not 0600."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        write(tmp)
        os.chmod(tmp, mode)
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
    tmp = final.parent / f".{final.name}.{secrets.token_hex(8)}.partial"
    os.mkdir(tmp, 0o777)  # narrowed by the umask, as any plainly created folder
    try:
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
