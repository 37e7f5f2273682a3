"""A small on-disk cache of directories, safe against concurrent builders and killed ones.

An entry is a directory. It is complete when it holds a ``COMPLETE`` marker, written
last, whose content is a sha256 manifest of every other file in the entry. Entries are
built in a temporary directory next to their final place (same filesystem) and renamed
into place atomically, under an exclusive ``fcntl.flock`` on a sibling ``<name>.lock``
file, so two processes building the same entry build it once. An entry whose files do
not match its manifest (a file truncated or changed after the fact) is treated as
incomplete: it is removed and rebuilt, never loaded.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

MARKER = "COMPLETE"
_MANIFEST_VERSION = 1


def cache_root() -> Path:
    """Returns the cache root folder: $SWEEPER_CACHE_DIR, else ~/.cache/sweeper (not created)."""
    env = os.environ.get("SWEEPER_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "sweeper"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Returns the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _entry_files(path: Path) -> list[str]:
    """Returns the relative POSIX paths of every regular file under `path`, except the marker."""
    out = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            rel = Path(root, name).relative_to(path).as_posix()
            if rel != MARKER:
                out.append(rel)
    return sorted(out)


def manifest(path: Path) -> dict:
    """Returns the manifest of a directory: {'version', 'files': {relpath: {'sha256', 'bytes'}}}."""
    files = {}
    for rel in _entry_files(path):
        p = path / rel
        files[rel] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return {"version": _MANIFEST_VERSION, "files": files}


def is_complete(path: Path) -> bool:
    """Returns True when `path` is a directory whose COMPLETE marker lists exactly its files
    with matching sizes and sha256 hashes; False otherwise (missing, partial, corrupted)."""
    path = Path(path)
    marker = path / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
        files = recorded["files"]
        if recorded.get("version") != _MANIFEST_VERSION or sorted(files) != _entry_files(path):
            return False
        # Cheap size check first, then the hashes.
        for rel, info in files.items():
            if (path / rel).stat().st_size != info["bytes"]:
                return False
        return all(file_sha256(path / rel) == info["sha256"] for rel, info in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_marker(path: Path) -> None:
    data = json.dumps(manifest(path), indent=1, sort_keys=True).encode()
    with open(path / MARKER, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _remove(path: Path) -> None:
    """Removes a directory (or file) by first renaming it aside, so readers never see half of it."""
    if not os.path.lexists(path):
        return
    trash = path.parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def lock_path(path: Path) -> Path:
    """Returns the sibling lock file used for entry `path` (``<name>.lock``)."""
    path = Path(path)
    return path.parent / f"{path.name}.lock"


def build_once(path: Path, build: Callable[[Path], None], *, force: bool = False) -> Path:
    """Returns `path` holding a complete entry, building it with `build(tmp_dir)` if needed.

    `build` receives an empty temporary directory on the same filesystem and must write the
    entry's files into it. If `path` is already complete it is returned at once. Otherwise an
    exclusive lock is taken, completeness is checked again (another process may have just
    built it), and the entry is built, its manifest marker written, and the directory renamed
    into place; an incomplete or corrupted old entry is removed first. If `build` raises,
    nothing is left behind and the exception propagates. `force` rebuilds a complete entry
    (replaced atomically, under the lock).
    """
    path = Path(path)
    if not force and is_complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(path), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not force and is_complete(path):
                return path
            # Leftovers of builders that were killed while holding the lock.
            for stale in list(path.parent.glob(f".{path.name}.tmp-*")) + list(path.parent.glob(f".{path.name}.trash-*")):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
            try:
                build(tmp)
                if (tmp / MARKER).exists():
                    raise RuntimeError(f"cache build for {path} wrote a file named {MARKER}, which is reserved")
                _fsync_tree(tmp)
                _write_marker(tmp)
                _remove(path)  # incomplete or corrupted old entry
                os.replace(tmp, path)
                dfd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return path
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
