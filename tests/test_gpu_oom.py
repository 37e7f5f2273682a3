"""A real CUDA out-of-memory error and its back-off, on a GPU machine (skipped without
CUDA; the CPU suite tests the retry logic with an injected error in test_faults): a kind
whose workers hold a small share of the GPU caps each worker's allocator at that share
(devices/oom.cap_gpu_memory), so a QAT job with a large batch runs out of memory and runs
again with half the batch until it fits."""
import json
import math

import pytest
from ray import tune

from sweeper.experiment import Experiment
from sweeper.sweep import run_experiment
from sweeper.tasks import WikiText2PPL

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine)")

CAP_BYTES = 6 << 30  # each worker's share of the GPU: 6 GiB, whatever the card (batch 256 needs ~4)


def test_qat_job_out_of_memory_halves_its_batch_and_records_it(ref_model_dir, tmp_path):
    share = CAP_BYTES / torch.cuda.get_device_properties(0).total_memory
    kinds = tmp_path / "kinds.json"
    kinds.write_text(json.dumps([{"name": "cudasmall", "resources": {"GPU": share, "CPU": 0}, "torch_device": "cuda",
                                  "threads": 1, "providers": ["CPUExecutionProvider"]}]))
    exp = Experiment(name="gpuoom", model="gpt2-ref", recipe="aimet_qat",
                     task=WikiText2PPL(max_tokens=4096, batch_size=8),
                     search_space={"lr": tune.grid_search([1e-4])},
                     fixed={"epochs": 1, "steps_per_epoch": 2, "calibration_batches": 1, "seq_len": 128,
                            "batch_size": 1024, "deploy_check": "off"},
                     device="cudasmall", kinds_file=str(kinds), workers=1, num_samples=1, scheduler="fifo",
                     max_failures=0, wandb_project="sweeper-tests")
    s = run_experiment(exp, results_dir=tmp_path, verbose=0).summary
    (t,) = s["trials"]
    print(json.dumps({k: v for k, v in t["metrics"].items() if k.startswith(("oom_", "wikitext2_ppl"))}))
    assert t["status"] == "TERMINATED", t.get("error")
    m = t["metrics"]
    assert m["oom_retries"] in (1, 2) and m["oom_batch_size"] == 1024 >> m["oom_retries"]
    assert m["oom_eval_batch_size"] == 8 >> m["oom_retries"] and math.isfinite(m["wikitext2_ppl"])
