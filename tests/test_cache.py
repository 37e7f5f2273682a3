"""The on-disk directory cache: built once under concurrency, corrupted entries rebuilt."""
import functools
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

from sweeper.cache import MARKER, build_once, cache_root, is_complete

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def _counting_build(counter: str, delay: float, out: Path) -> None:
    """Writes a 1 MiB payload and a small file; appends one line to `counter` per call."""
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    (out / "sub").mkdir()
    (out / "sub" / "payload.bin").write_bytes(PAYLOAD)
    time.sleep(delay)  # keep the build window open so the other process must wait on it
    (out / "meta.json").write_text(json.dumps({"ok": True}))


def _builder(entry: str, counter: str, barrier, results) -> None:
    barrier.wait(timeout=60)
    p = build_once(Path(entry), functools.partial(_counting_build, counter, 1.5))
    results.put((str(p), (p / "sub" / "payload.bin").read_bytes() == PAYLOAD, is_complete(p)))


def test_cache_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == (tmp_path / "c").resolve()
    monkeypatch.delenv("SWEEPER_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "sweeper"


def test_two_processes_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    entry, counter = tmp_path / "zoo" / "thing-abc", tmp_path / "count.txt"
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_builder, args=(str(entry), str(counter), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [results.get(timeout=5) for _ in procs]
    assert got == [(str(entry), True, True)] * 2
    assert len(counter.read_text().splitlines()) == 1  # the build ran exactly once
    assert is_complete(entry)
    # no temporary or trash directories left next to the entry
    assert sorted(x.name for x in entry.parent.iterdir()) == ["thing-abc", "thing-abc.lock"]


def test_truncated_file_is_detected_and_rebuilt(tmp_path):
    entry, counter = tmp_path / "e", tmp_path / "count.txt"
    build = functools.partial(_counting_build, str(counter), 0.0)
    build_once(entry, build)
    assert is_complete(entry) and len(counter.read_text().splitlines()) == 1
    build_once(entry, build)  # complete: not rebuilt
    assert len(counter.read_text().splitlines()) == 1

    payload = entry / "sub" / "payload.bin"
    with open(payload, "r+b") as f:  # as a killed writer would leave it
        f.truncate(1000)
    assert not is_complete(entry)
    build_once(entry, build)
    assert len(counter.read_text().splitlines()) == 2
    assert payload.read_bytes() == PAYLOAD and is_complete(entry)

    # same size, one byte changed: caught by the hash
    data = bytearray(PAYLOAD)
    data[12345] ^= 0xFF
    payload.write_bytes(bytes(data))
    assert not is_complete(entry)
    build_once(entry, build)
    assert len(counter.read_text().splitlines()) == 3 and payload.read_bytes() == PAYLOAD


def test_entry_without_marker_or_with_extra_file_is_incomplete(tmp_path):
    entry, counter = tmp_path / "e", tmp_path / "count.txt"
    build = functools.partial(_counting_build, str(counter), 0.0)
    entry.mkdir()
    (entry / "meta.json").write_text("{}")  # a half-written entry, no marker
    assert not is_complete(entry)
    build_once(entry, build)
    assert is_complete(entry) and json.loads((entry / "meta.json").read_text()) == {"ok": True}
    (entry / "stray.txt").write_text("x")
    assert not is_complete(entry)
    (entry / "stray.txt").unlink()
    assert is_complete(entry)
    (entry / MARKER).write_text("not json")
    assert not is_complete(entry)


def test_failed_build_leaves_nothing(tmp_path):
    entry = tmp_path / "e"

    def boom(out: Path):
        (out / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("killed")

    try:
        build_once(entry, boom)
    except RuntimeError:
        pass
    else:
        raise AssertionError("build error was swallowed")
    assert not entry.exists()
    assert [x.name for x in tmp_path.iterdir()] == ["e.lock"]
