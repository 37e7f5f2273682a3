"""benchmarks/qat_step.py runs end to end on CPU with a tiny GPT-2 shape."""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import qat_step  # noqa: E402

TINY = ["--device", "cpu", "--layers", "2", "--width", "64", "--heads", "2", "--vocab", "512", "--seq-len", "32",
        "--batch-size", "2", "--steps", "3", "--warmup", "1", "--threads", "1"]


def test_tiny_cpu_run(tmp_path, capsys):
    result = qat_step.main(TINY + ["--json", str(tmp_path / "out.json")])
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == set(qat_step.VARIANTS)
    for r in rows.values():
        ok = r["tokens_per_s"] is not None and math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
        assert ok or r["error"], r
    qat = rows["qat"]
    assert qat["error"] is None and math.isfinite(qat["tokens_per_s"]) and qat["tokens_per_s"] > 0
    assert qat["step_ms"] > 0 and qat["peak_mem_mb"] is None  # no CUDA memory on CPU
    assert rows["fp32"]["ratio_vs_fp32"] == 1.0
    assert (tmp_path / "out.json").is_file()
    out = capsys.readouterr().out
    assert "device: cpu" in out and "aimet-torch" in out and "qat_bf16_autocast" in out
