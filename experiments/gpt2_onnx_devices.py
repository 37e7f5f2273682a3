"""GPT-2 exported to ONNX, evaluated in FP32 and FP16 on every available device kind.

The seed: gpt2 exported to ONNX (no KV cache, dynamic sequence), WikiText-2 perplexity on
CPU, GPU and Enflame GCU through ONNX Runtime execution providers, 29.372 FP32 / 29.383 FP16.
Here every trial is one (device, precision) pair; each reports perplexity, latency and
throughput, and the summary holds one report per trial in the seed's shape.

    python experiments/gpt2_onnx_devices.py --smoke            # CPU: minutes
    python experiments/gpt2_onnx_devices.py --device cpu,cuda   # these kinds, or fail
    ray job submit --working-dir . -- python experiments/gpt2_onnx_devices.py

The default device "all" is every kind some node can host with its execution provider
installed; a kind named explicitly that no node offers is an error before any trial runs.
The graph is opset 18: torch's exporter cannot write GPT-2 at the seed's opset 13.
"""
from ray import tune

from sweeper.experiment import Experiment
from sweeper.models.loading import resolve_default_model
from sweeper.tasks import WikiText2PPL


def experiment(smoke: bool = False, batch_size: int = 8) -> Experiment:
    """Returns the device-evaluation sweep; `smoke` evaluates a 32k-token slice only."""
    return Experiment(
        name="gpt2_onnx_devices_smoke" if smoke else "gpt2_onnx_devices",
        model=resolve_default_model("gpt2", fallback="gpt2-ref"),
        recipe="onnx_precision",
        task=WikiText2PPL(split="test", batch_size=batch_size, max_tokens=32_768 if smoke else None),
        search_space={"precision": tune.grid_search(["fp32", "fp16"])},
        device="all",  # a grid over the kinds found, one worker each
        workers=1,
        num_samples=1,
        scheduler="fifo",
        seed=0,
        wandb_project="sweeper-gpt2-onnx-devices",
    )


if __name__ == "__main__":
    from sweeper.cli import main_for_experiment_file

    raise SystemExit(main_for_experiment_file(__file__))
