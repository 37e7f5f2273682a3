"""Where a sweep's results live: a local folder, or any URI that pyarrow's filesystems open
(s3://, gs://, hdfs://, file://), which is also what Ray Tune's `storage_path` accepts.

A `ResultsStore` is one experiment's folder there. Tune writes its trial folders into it
itself; the sweeper's own files (baseline, summary, encodings, W&B offline runs) are
written into `local_dir`, which is the folder itself when the filesystem is local, else a
local staging folder that `publish()` copies up.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

# Where a sweep run as a Ray job writes when given no storage: the head's home, not the
# job's working directory (Ray unpacks that in its session folder and deletes it).
JOB_DEFAULT_ROOT = "~/sweeper-results"
LOCAL_DEFAULT_ROOT = "results"
ALLOWED = "a local folder path or a URI pyarrow opens (s3://, gs://, hdfs://, file://)"
# Set by Ray's job supervisor for a job's entrypoint (ray.dashboard.modules.job.job_supervisor).
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def is_uri(spec: str) -> bool:
    """Returns whether `spec` is a URI (scheme://...) rather than a filesystem path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec) is not None


def under_ray_job() -> bool:
    """Returns whether this process is the entrypoint of a Ray job (`ray job submit`)."""
    return _JOB_CONFIG_ENV in os.environ


def job_env_vars() -> dict:
    """Returns the env_vars of the Ray job's runtime_env this process runs in ({} outside a job)."""
    try:
        return dict(json.loads(os.environ.get(_JOB_CONFIG_ENV, "{}")).get("runtime_env", {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return {}


def default_root() -> str:
    """Returns the storage root used when none is given: ~/sweeper-results (expanded) under
    a Ray job, else ./results (absolute)."""
    return str(Path(JOB_DEFAULT_ROOT if under_ray_job() else LOCAL_DEFAULT_ROOT).expanduser().resolve())


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if is_uri(root) else str(Path(root) / name)


@dataclass
class ResultsStore:
    """One experiment's results folder. `root`: the storage root as given to Tune (an
    absolute local path, or a URI); `name`: the experiment; `fs`/`fs_path`: the pyarrow
    filesystem and the folder's path inside it; `local_dir`: where the sweeper writes its
    own files (the folder itself on a local filesystem, else a staging folder)."""

    root: str
    name: str
    fs: object
    fs_path: str
    local_dir: Path
    shared: bool = False  # given as a URI: every node reaches it (s3://, gs://, or file:// on a shared mount)

    @property
    def uri(self) -> str:
        """Returns the experiment folder as the user names it (a local path or a URI)."""
        return _join(self.root, self.name)

    @property
    def zoo_uri(self) -> str:
        """Returns the folder of the storage root where reference models are shared."""
        return _join(self.root if not self.is_local else Path(self.root).as_uri(), "zoo")

    @property
    def is_local(self) -> bool:
        """Returns whether the folder is on this machine's filesystem (written in place)."""
        import pyarrow.fs as pafs

        return isinstance(self.fs, pafs.LocalFileSystem)

    def where(self, local_file: Path) -> str:
        """Returns where a file of `local_dir` ends up once published (a path or a URI)."""
        rel = Path(local_file).resolve().relative_to(self.local_dir.resolve()).as_posix()
        return _join(self.uri, rel)

    def exists(self, rel: str) -> bool:
        """Returns whether the file `rel` (relative to the experiment folder) exists there."""
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self.fs_path}/{rel}").type == pafs.FileType.File

    def fetch(self, rel: str) -> bool:
        """Copies the file `rel` from the store into local_dir (a no-op on a local store);
        returns whether it exists."""
        if not self.exists(rel):
            return False
        if not self.is_local:
            dst = self.local_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(f"{self.fs_path}/{rel}") as src:
                dst.write_bytes(src.read())
        return True

    def publish(self) -> None:
        """Copies everything under local_dir into the store (a no-op on a local store)."""
        if self.is_local:
            return
        import pyarrow.fs as pafs

        pafs.copy_files(str(self.local_dir), f"{self.fs_path}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)


def open_filesystem(spec: str, where: str, field: str):
    """Returns (pyarrow FileSystem, path inside it, the root as Tune should get it) for a
    local path or URI; raises ConfigError (one line) when pyarrow cannot open it."""
    import pyarrow.fs as pafs

    if not is_uri(spec):
        path = str(Path(spec).expanduser().resolve())
        return pafs.LocalFileSystem(), path, path
    try:
        fs, path = pafs.FileSystem.from_uri(spec)
    except Exception as exc:  # ArrowInvalid for an unknown scheme, OSError for a bad bucket, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(where, field, spec, f"{ALLOWED} ({type(exc).__name__}: {first[:200]})") from None
    # A local URI (file://) is handed to Tune as the plain path: the same folder, no syncing.
    return fs, path, path if isinstance(fs, pafs.LocalFileSystem) else spec.rstrip("/")


def open_store(root: str | os.PathLike | None, name: str, *, where: str = "sweeper run",
               field: str = "--storage") -> ResultsStore:
    """Returns the ResultsStore of experiment `name` under storage `root` (None: the
    default root), creating its folder. Raises ConfigError (one line) when the root is a
    URI pyarrow cannot open, a relative path under a Ray job (that would be the job's
    temporary working directory), or a folder that cannot be created."""
    spec = default_root() if root is None else os.fspath(root)
    if not spec.strip():
        raise ConfigError(where, field, spec, ALLOWED)
    if under_ray_job() and not is_uri(spec) and not Path(spec).expanduser().is_absolute():
        raise ConfigError(where, field, spec, f"an absolute path or a URI under a Ray job (a relative path lands in the "
                                              f"job's working directory, deleted with the Ray session; default {JOB_DEFAULT_ROOT})")
    fs, root_path, tune_root = open_filesystem(spec, where, field)
    fs_path = f"{root_path.rstrip('/')}/{name}"
    try:
        fs.create_dir(fs_path, recursive=True)
    except Exception as exc:
        raise ConfigError(where, field, spec, f"{ALLOWED} where the folder {name!r} can be created "
                                              f"({type(exc).__name__}: {str(exc).strip()[:200]})") from None
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        if not os.access(fs_path, os.W_OK):
            raise ConfigError(where, field, spec, f"{ALLOWED} that this user can write to")
        local = Path(fs_path)
    else:
        local = Path(tempfile.mkdtemp(prefix=f"sweeper-{name}-"))
    return ResultsStore(root=tune_root, name=name, fs=fs, fs_path=fs_path, local_dir=local, shared=is_uri(spec))


def holds_file(spec: str, rel: str, *, where: str, field: str) -> bool:
    """Returns whether the folder `spec` (a path or URI) holds the file `rel`; creates nothing."""
    import pyarrow.fs as pafs

    fs, path, _ = open_filesystem(spec, where, field)
    return fs.get_file_info(f"{path.rstrip('/')}/{rel}").type == pafs.FileType.File


def split_run_uri(spec: str) -> tuple[str, str]:
    """Returns (storage root, experiment name) of an experiment folder's path or URI."""
    s = os.fspath(spec).rstrip("/")
    if is_uri(s):
        root, _, name = s.rpartition("/")
        return root, name
    p = Path(s).expanduser().resolve()
    return str(p.parent), p.name


def fetch_tree(spec: str, dest: Path, keep, *, where: str, field: str) -> Path:
    """Copies the files under a folder URI whose relative path `keep(rel)` accepts into
    `dest` and returns dest; for a URI naming one file, copies it and returns its local
    copy. Raises ConfigError (one line) when the URI cannot be opened or holds no file."""
    import pyarrow.fs as pafs

    fs, path, _ = open_filesystem(spec, where, field)
    path = path.rstrip("/")
    if fs.get_file_info(path).type == pafs.FileType.File:  # one file: copied as it is
        out = dest / path.rsplit("/", 1)[-1]
        out.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(path) as src:
            out.write_bytes(src.read())
        return out
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except Exception as exc:
        raise ConfigError(where, field, spec, f"an existing folder ({type(exc).__name__}: {str(exc).strip()[:200]})") from None
    copied = 0
    for info in infos:
        rel = info.path[len(path):].lstrip("/")
        if info.type != pafs.FileType.File or not keep(rel):
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src:
            out.write_bytes(src.read())
        copied += 1
    if not copied:
        raise ConfigError(where, field, spec, "a folder holding sweep results (found no file there)")
    return dest


def upload_dir(local: Path, uri: str, last: str | None = None) -> None:
    """Copies every file under the local folder `local` to the folder `uri`, the file named
    `last` (a completeness marker) after all the others."""
    import pyarrow.fs as pafs

    fs, path, _ = open_filesystem(uri, "storage", "uri")
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)
    for f in files:
        dst = f"{path.rstrip('/')}/{f.relative_to(local).as_posix()}"
        fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(f), dst, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def read_bytes(uri: str) -> bytes | None:
    """Returns the bytes of the file at `uri`, or None when there is none."""
    import pyarrow.fs as pafs

    fs, path, _ = open_filesystem(uri, "storage", "uri")
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()
