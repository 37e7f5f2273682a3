"""Reads W&B offline run files (`run-*.wandb`) without the network.

The file is W&B's datastore: a 7-byte header (":W&B", 0xBEE1, version) followed by a
LevelDB-style log of 32 KiB blocks; each chunk has a 7-byte header (CRC, little-endian
length, type FULL/FIRST/MIDDLE/LAST) and holds part of a serialized `Record` protobuf.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(path: str | Path):
    """Yields the protobuf `Record` messages of one offline run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (bad magic)")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - (pos % _BLOCK)
        if left_in_block < _HEADER:  # block trailer padding
            pos += left_in_block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + _HEADER: pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            payload, pending = chunk, b""
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind == _MIDDLE:
            pending += chunk
            continue
        elif kind == _LAST:
            payload, pending = pending + chunk, b""
        else:
            raise ValueError(f"{path}: bad chunk type {kind} at byte {pos}")
        rec = pb.Record()
        rec.ParseFromString(payload)
        yield rec


def read_offline_run(run_dir: str | Path) -> dict:
    """Returns {"run_id", "project", "config": {...}, "history": [ {metric: value} per step ],
    "summary": {...}} for an offline run folder (wandb/offline-run-*)."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out = {"run_id": None, "project": None, "config": {}, "history": [], "summary": {}}

    def items(seq):
        return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in seq}

    for rec in iter_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run_id"], out["project"] = rec.run.run_id, rec.run.project
            out["config"].update(items(rec.run.config.update))
        elif kind == "config":
            out["config"].update(items(rec.config.update))
        elif kind == "history":
            out["history"].append(items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(items(rec.summary.update))
    for k, v in out["config"].items():
        if isinstance(v, dict) and set(v) == {"value"}:
            out["config"][k] = v["value"]
    return out
