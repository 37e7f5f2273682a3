"""`sweeper run | resume | rerun | sensitivity | devices | zoo | report | leaderboard` — the command line."""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from .errors import ConfigError, SweeperError



def workers_per_device_arg(text: str):
    """Returns --workers-per-device's value: "auto" or an int (argparse reports anything else)."""
    return text if text == "auto" else int(text)

def load_experiment_file(path: str | Path, verbose: bool = False):
    """Imports an experiment file; returns its `experiment(smoke=False)` function.
    Raises ConfigError (one line) when the file is missing or defines no experiment, and
    ExperimentFileError (one line: file, line, error) when importing it fails, unless
    `verbose` (then the import's own exception, traceback and all)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("sweeper run", "EXPERIMENT_FILE", str(path), "an existing Python file")
    spec = importlib.util.spec_from_file_location(f"sweeper_experiment_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        if verbose:
            raise
        raise ExperimentFileError(import_error_line(p, exc)) from None
    fn = getattr(module, "experiment", None)
    if not callable(fn):
        raise ConfigError("sweeper run", "EXPERIMENT_FILE", str(path),
                          "a file defining `def experiment(smoke: bool = False) -> sweeper.Experiment`")
    return fn


class ExperimentFileError(SweeperError):
    """An experiment file that fails to import (syntax error, exception at import time)."""


def import_error_line(path: Path, exc: BaseException) -> str:
    """Returns '<file>:<line>: <Type>: <message>' for an exception raised while importing
    the file at `path`: the syntax error's own line, else the deepest traceback frame in
    that file (else the deepest frame), with a hint that --verbose shows the traceback."""
    import traceback

    if isinstance(exc, SyntaxError):
        where = f"{exc.filename or path}:{exc.lineno}"
        text = f"SyntaxError: {exc.msg}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        mine = [f for f in frames if Path(f.filename).resolve() == path.resolve()] or frames
        where = f"{mine[-1].filename}:{mine[-1].lineno}" if mine else str(path)
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return f"cannot import the experiment file: {where}: {text} (--verbose shows the traceback)"


def build_experiment(path: str | Path, *, smoke: bool = False, num_samples: int | None = None,
                     model: str | None = None, device: str | None = None, workers: int | None = None,
                     kinds_file: str | None = None, seeds: int | None = None, verbose: bool = False,
                     workers_per_device: int | str | None = None):
    """Returns the validated Experiment of an experiment file with the CLI's overrides
    applied (`verbose`: an import error keeps its traceback)."""
    from .experiment import Experiment
    from .record import run_origin

    exp = load_experiment_file(path, verbose=verbose)(smoke=smoke)
    if not isinstance(exp, Experiment):
        raise ConfigError("sweeper run", "experiment()", type(exp).__name__, "a sweeper.experiment.Experiment")
    if num_samples is not None:
        exp.num_samples = num_samples
    if model is not None:
        exp.model = model
    if device is not None:
        exp.device = device.split(",") if "," in device else device
    if kinds_file is not None:
        exp.kinds_file = kinds_file
    if workers is not None:
        exp.workers = workers
    if seeds is not None:
        exp.seeds = seeds
    if workers_per_device is not None:
        exp.workers_per_device = workers_per_device
    exp.origin = run_origin(path, {"smoke": smoke or None, "num_samples": num_samples, "model": model,
                                   "device": device, "workers": workers, "kinds_file": kinds_file, "seeds": seeds,
                                   "workers_per_device": workers_per_device})
    return exp.validate()


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true", help="a few short trials that finish in minutes on a laptop")
    p.add_argument("--num-samples", type=int, help="number of trials sampled from the search space")
    p.add_argument("--summary", help="write the summary JSON here too (default: STORAGE/NAME/summary.json)")
    p.add_argument("--storage", "--results-dir", dest="storage", metavar="PATH_OR_URI",
                   help="where every result goes: a local or shared folder, or a URI Ray Tune's storage_path takes "
                        "(s3://, gs://, file://); default ./results, or ~/sweeper-results under `ray job submit`")
    p.add_argument("--model", help="Hugging Face id, local path or reference model name (overrides the file)")
    p.add_argument("--device", help="device kind(s) of the workers: cpu, cuda, gcu, a comma list, or 'all' (overrides the file)")
    p.add_argument("--kinds", help="a YAML/JSON file of extra device kinds (another vendor's EP, TensorRT, ...)")
    p.add_argument("--workers", type=int, help="number of device workers (default: all the cluster holds)")
    p.add_argument("--workers-per-device", type=workers_per_device_arg,
                   help="workers sharing one GPU (Ray fractional GPUs; default 1), or 'auto': measured on the first trial")
    p.add_argument("--seeds", type=int, help="run every configuration N times, each with its own seed; tables then "
                   "show mean ± std and mark ties within the noise (overrides the file)")
    p.add_argument("--verbose", action="store_true", help="show Ray Tune's trial table, workers' per-job lines and "
                   "library warnings live (by default they go to STORAGE/NAME/logs/ and one progress line shows)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in STORAGE/NAME")
    p.add_argument("--retry-errored", action="store_true",
                   help="with --resume: run the trials that ended in ERROR again, from scratch")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sweeper", description="Distributed quantization sweeps on Ray Tune.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run an experiment file")
    run.add_argument("experiment_file")
    _add_run_flags(run)
    res = sub.add_parser("resume", help="continue an interrupted sweep from its results folder")
    res.add_argument("results_dir", metavar="RESULTS", help="the experiment's results folder, a path or URI (STORAGE/NAME)")
    res.add_argument("experiment_file")
    res.add_argument("--summary")
    res.add_argument("--retry-errored", action="store_true", help="run the trials that ended in ERROR again, from scratch")
    res.add_argument("--verbose", action="store_true", help="show Tune's table, worker lines and warnings live")
    rr = sub.add_parser("rerun", help="run one finished trial again from its record and compare the metrics")
    rr.add_argument("results_dir", metavar="RESULTS", help="the sweep's local results folder (STORAGE/NAME)")
    rr.add_argument("trial_id", metavar="TRIAL_ID")
    rr.add_argument("--storage", help="where the rerun's results go (default: beside RESULTS)")
    rr.add_argument("--verbose", action="store_true", help="show Tune's table, worker lines and warnings live")
    sens = sub.add_parser("sensitivity", help="per-layer sensitivity of an experiment's model and recipe, one job per "
                          "layer over all workers (the experiment's `sensitivity` stage alone)")
    sens.add_argument("experiment_file")
    for flag, kw in (("--smoke", {"action": "store_true", "help": "the experiment's smoke version"}),
                     ("--model", {"help": "overrides the file's model"}),
                     ("--device", {"help": "device kind(s) of the workers (overrides the file)"}),
                     ("--workers", {"type": int, "help": "number of device workers (default: all the cluster holds)"}),
                     ("--workers-per-device", {"type": workers_per_device_arg, "help": "workers sharing one GPU, or 'auto'"}),
                     ("--storage", {"metavar": "PATH_OR_URI", "help": "results root (default ./results)"}),
                     ("--verbose", {"action": "store_true", "help": "workers' lines and library warnings live"})):
        sens.add_argument(flag, **kw)
    dev = sub.add_parser("devices", help="list each node's device kinds, counts and onnxruntime providers")
    dev.add_argument("--kinds", help="a YAML/JSON file of extra device kinds to list too")
    dev.add_argument("--json", action="store_true")
    zoo = sub.add_parser("zoo", help="reference models the library trains itself")
    zsub = zoo.add_subparsers(dest="zoo_cmd", required=True)
    zb = zsub.add_parser("build", help="build (train) a reference model")
    zb.add_argument("name")
    zb.add_argument("--force", action="store_true", help="rebuild even if a complete entry exists")
    # checked by zoo.resolve_device (one-line error), not argparse choices
    zb.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when torch sees one); "
                    "not part of the cache key, recorded in the card")
    zsub.add_parser("list", help="list built reference models, and the registered ones not built yet")
    zi = zsub.add_parser("import", help="copy a zoo entry built elsewhere (its cache folder) into this cache")
    zi.add_argument("path", help="the entry's folder (card.json, model.safetensors, ...), e.g. copied from "
                    "<cache>/zoo/NAME-HASH on a GPU machine")
    zi.add_argument("--force", action="store_true", help="replace a complete entry already in the cache")
    rp = sub.add_parser("report", help="write one self-contained HTML page for one or several sweeps")
    rp.add_argument("results_dirs", nargs="+", metavar="RESULTS", help="results folders (STORAGE/NAME) or summary JSON files")
    rp.add_argument("-o", "--output", help="the page to write (default: RESULTS/report.html for one folder, "
                    "else ./report.html)")
    # listed for --help only: main() hands its arguments to sweeper.reports.leaderboard untouched
    sub.add_parser("leaderboard", help="rank the trials of several sweeps together (see: sweeper leaderboard -h)",
                   add_help=False)
    return ap


def _check_run_flags(args) -> None:
    from .config import check_int

    if args.num_samples is not None:  # 0 runs only the file's fixed trials; the experiment refuses it without any
        check_int("sweeper run", "--num-samples", args.num_samples, 0, 100_000)
    if args.workers is not None:
        check_int("sweeper run", "--workers", args.workers, 1, 4096)
    if args.seeds is not None:
        check_int("sweeper run", "--seeds", args.seeds, 1, 1000)


def _cmd_run(args) -> int:
    from .sweep import run_experiment

    _check_run_flags(args)
    exp = build_experiment(args.experiment_file, smoke=args.smoke, num_samples=args.num_samples,
                           model=args.model, device=args.device, workers=args.workers, kinds_file=args.kinds,
                           seeds=args.seeds, verbose=args.verbose, workers_per_device=args.workers_per_device)
    result = run_experiment(exp, results_dir=args.storage, summary_path=args.summary, resume=args.resume,
                            retry_errored=args.retry_errored, quiet=not args.verbose)
    return 0 if any(t["status"] == "TERMINATED" for t in result.summary["trials"]) else 1


def _cmd_resume(args) -> int:
    from .storage import holds_file, split_run_uri
    from .sweep import run_experiment

    root, name = split_run_uri(args.results_dir)
    if not holds_file(args.results_dir, "tuner.pkl", where="sweeper resume", field="RESULTS"):
        raise ConfigError("sweeper resume", "RESULTS", str(args.results_dir), "a sweep's results folder or URI (it holds tuner.pkl)")
    exp = build_experiment(args.experiment_file, verbose=args.verbose)
    exp.name = name
    run_experiment(exp, results_dir=root, summary_path=args.summary, resume=True, retry_errored=args.retry_errored,
                   quiet=not args.verbose)
    return 0


def _cmd_rerun(args) -> int:
    from .reports.summary_tables import rerun_table
    from .rerun import rerun

    old, new = rerun(args.results_dir, args.trial_id, storage=args.storage, quiet=not args.verbose)
    print(rerun_table(old, new), flush=True)
    return 0 if new["status"] == "TERMINATED" else 1


def _cmd_sensitivity(args) -> int:
    from .sweep import run_sensitivity

    if args.workers is not None:
        from .config import check_int

        check_int("sweeper sensitivity", "--workers", args.workers, 1, 4096)
    exp = build_experiment(args.experiment_file, smoke=args.smoke, model=args.model, device=args.device,
                           workers=args.workers, verbose=args.verbose, workers_per_device=args.workers_per_device)
    run_sensitivity(exp, results_dir=args.storage, quiet=not args.verbose)
    return 0


def _cmd_devices(args) -> int:
    from .devices.discovery import discover
    from .devices.kinds import KINDS, load_kinds_file, register_kind
    from .sweep import init_ray

    for kind in load_kinds_file(args.kinds) if args.kinds else []:
        register_kind(kind)
    init_ray("sweeper-devices")
    nodes = discover()
    kinds = {name: {"resources_per_worker": k.resources, "provider": k.provider,
                    "workers_possible": sum(n["kinds"].get(name, 0) for n in nodes),
                    "workers_usable_onnx": sum(n["kinds_usable"].get(name, 0) for n in nodes)}
             for name, k in KINDS.items()}
    if args.json:
        print(json.dumps({"nodes": nodes, "kinds": kinds}, indent=2))
        return 0
    for n in nodes:
        print(f"node {n['host']} ({n['address']}, {n['node_id'][:12]}): resources {n['resources']}")
        print(f"  onnxruntime {n['onnxruntime']}: {', '.join(n['providers']) or 'no providers'}")
        for name, count in n["kinds"].items():
            missing = "" if name in n["kinds_usable"] else f"  [{KINDS[name].provider} missing: torch jobs only]"
            print(f"  kind {name:8s} x{count}{missing}")
    for name, k in kinds.items():
        print(f"kind {name:8s} workers possible: {k['workers_possible']} (ONNX-usable {k['workers_usable_onnx']}); "
              f"each holds {k['resources_per_worker']}, runs on {k['provider']}")
    return 0


def _cmd_zoo(args) -> int:
    from .models import zoo

    if args.zoo_cmd == "build":
        if args.name not in zoo.zoo_names():
            raise ConfigError("sweeper zoo build", "NAME", args.name, ", ".join(zoo.zoo_names()))
        path = zoo.build(args.name, force=args.force, device=args.device)
        card = json.loads((path / "card.json").read_text())
        if "wikitext2_test_ppl" not in card:  # an encoder: its card holds MLM loss or GLUE dev metrics
            print(f"{args.name}: {path}\n  {_encoder_note(card)}, built in {card['seconds']:.0f}s")
            return 0
        print(f"{args.name}: {path}\n  WikiText-2 test perplexity {card['wikitext2_test_ppl']:.2f} "
              f"(unigram on the same tokenizer {card['unigram_ppl']:.2f}), built in {card['seconds']:.0f}s"
              f"{_zoo_training_note(card)}")
        return 0
    if args.zoo_cmd == "import":
        path, copied = zoo.import_entry(args.path, force=args.force)
        card = json.loads((path / "card.json").read_text())
        print(f"{card['name']}: {'imported into' if copied else 'already in the cache at'} {path}\n"
              f"  WikiText-2 test perplexity {card['wikitext2_test_ppl']:.2f}{_zoo_training_note(card)}")
        return 0
    cards = zoo.list_built()
    if not cards:
        print("no reference models built yet; try: sweeper zoo build gpt2-ref")
    for c in cards:
        if "wikitext2_test_ppl" not in c:
            print(f"{c['name']:12s} {_encoder_note(c)}  {c['path']}")
            continue
        counts = c.get("parameter_counts")
        if counts is None and c["name"] in zoo.zoo_names() and c["spec_hash"] == zoo.get_spec(c["name"]).spec_hash():
            counts = zoo.spec_parameter_counts(c["name"])  # a card written before cards recorded them
        matmul = f" ({counts['matmul_fraction']:.0%} in matmuls)" if counts else ""
        trained_on = c.get("device", {}).get("type", "cpu")
        print(f"{c['name']:12s} test ppl {c['wikitext2_test_ppl']:8.2f}  unigram {c['unigram_ppl']:8.2f}  "
              f"params {c['parameter_count']:,}{matmul}  trained on {c['training']['dataset']}/{c['training']['split']} "
              f"({trained_on})  {c['path']}")
    built_paths = {c["path"] for c in cards}
    for name in zoo.zoo_names():
        if str(zoo.entry_path(name)) not in built_paths:  # not built for the current spec
            counts = zoo.spec_parameter_counts(name)
            print(f"{name:12s} not built (sweeper zoo build {name})  params {counts['total']:,} "
                  f"({counts['matmul_fraction']:.0%} in matmuls)")
    return 0


def _cmd_report(args) -> int:
    from .reports.report_page import PAGE_NAME, load_sweeps, write_report_page

    sweeps = load_sweeps(args.results_dirs)
    if args.output:
        out = Path(args.output)
    elif len(sweeps) == 1 and sweeps[0][1] is not None:
        out = sweeps[0][1] / PAGE_NAME
    else:
        out = Path(PAGE_NAME)
    path = write_report_page(sweeps, out)
    print(f"[sweeper] report ({len(sweeps)} sweep(s), {sum(len(s['trials']) for s, _ in sweeps)} trials): {path}")
    return 0


def _zoo_training_note(card: dict) -> str:
    """Returns '\n  trained on DEVICE (NAME): S s, T tokens/s; P parameters, F% in matmuls' for
    cards that record them (older cards: '')."""
    if "device" not in card:
        return ""
    dev, tr, counts = card["device"], card["training"], card["parameter_counts"]
    return (f"\n  trained on {dev['type']} ({dev['name']}): {tr['seconds']:.0f}s, {tr['tokens_per_second']:,.0f} tokens/s; "
            f"{counts['total']:,} parameters, {counts['matmul_fraction']:.0%} in matmuls")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sweeper` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["leaderboard"]:
        from .reports.leaderboard import main as leaderboard_main

        return leaderboard_main(argv[1:])
    args = _parser().parse_args(argv)
    handlers = {"run": _cmd_run, "resume": _cmd_resume, "rerun": _cmd_rerun, "devices": _cmd_devices, "zoo": _cmd_zoo,
                "report": _cmd_report, "sensitivity": _cmd_sensitivity}
    try:
        return handlers[args.cmd](args)
    except SweeperError as exc:
        print(f"sweeper: error: {exc}", file=sys.stderr)
        return 2


def _encoder_note(card: dict) -> str:
    """Returns one line about an encoder zoo card: the GLUE dev metrics of a fine-tuned
    classifier (percent), or the masked-LM training loss of a base encoder."""
    if "dev_metrics" in card:
        return f"GLUE {card['task']} dev: " + ", ".join(f"{k} {v:.2f}" for k, v in card["dev_metrics"].items()
                                                      if isinstance(v, float) and k != "glue_score")
    return f"masked-LM training loss {card['training']['final_loss_avg']:.3f} (nats/token)"


def main_for_experiment_file(path: str, argv: list[str] | None = None) -> int:
    """What `python experiments/X.py [flags]` runs: the same as `sweeper run X.py [flags]`."""
    return main(["run", path] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
