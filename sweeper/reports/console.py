"""Quiet console mode: what a sweep's libraries would print besides the sweep's own lines
(Python warnings, transformers' advisories, W&B's run banners, workers' per-job lines)
goes to the sweep's logs folder instead. Workers read the mode from the environment the
driver hands them (`QUIET_ENV`, `LOG_DIR_ENV`)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

QUIET_ENV = "SWEEPER_CONSOLE"  # "quiet": workers keep their per-job lines in LOG_DIR_ENV
LOG_DIR_ENV = "SWEEPER_LOG_DIR"
# set for the driver and every worker of a quiet sweep (W&B banners, transformers advisories)
QUIET_LIBRARY_ENV = {"WANDB_SILENT": "true", "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def is_quiet() -> bool:
    """Returns whether this process belongs to a quiet sweep."""
    return os.environ.get(QUIET_ENV) == "quiet"


def log_file(name: str) -> Path | None:
    """Returns the quiet sweep's log file `name` in its logs folder (created), or None when
    the sweep is not quiet or has no logs folder."""
    folder = os.environ.get(LOG_DIR_ENV)
    if not is_quiet() or not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / name


def redirect_output_to(path: Path) -> None:
    """Points this process's stdout and stderr (file descriptors 1 and 2, so C++ and native
    library output too) at `path`, appending: a quiet sweep's worker keeps everything it
    prints in its log file."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


class SplitHandler(logging.Handler):
    """The logging handler of a quiet sweep: every record at INFO and above into the file
    at `path`, ERROR and above also on stderr."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.to_file = logging.FileHandler(path)
        self.to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.to_console = logging.StreamHandler(sys.stderr)
        self.to_console.setFormatter(logging.Formatter("[ray] %(levelname)s: %(message)s"))
        self.to_console.setLevel(logging.ERROR)

    def emit(self, record):
        self.to_file.handle(record)
        if record.levelno >= logging.ERROR:
            self.to_console.handle(record)

    def close(self):
        self.to_file.close()
        super().close()


def route_ray_logging(path: Path) -> tuple:
    """Sends the `ray` logger's records (Tune's and Train's too), and those of any logger
    without a handler (Python's last-resort handler, which Ray's own start-up warnings reach
    while ray.init rebuilds its logging), to `path`, keeping only ERROR and above on stderr.
    After ray.init (which drops the `ray` logger's handlers) call reattach_ray_logging.
    Returns what restore_ray_logging needs to undo it."""
    logger = logging.getLogger("ray")
    saved = (logger.handlers[:], logger.propagate, logger.level, logging.lastResort)
    handler = SplitHandler(path)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logging.lastResort = handler
    return saved


def reattach_ray_logging() -> None:
    """Puts route_ray_logging's handler (still Python's last-resort one) back on the `ray`
    logger, whose handlers ray.init drops; nothing when logging is not routed."""
    handler = logging.lastResort
    if isinstance(handler, SplitHandler):
        logger = logging.getLogger("ray")
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)


def restore_ray_logging(saved: tuple) -> None:
    """Undoes route_ray_logging (closing the handlers it made)."""
    logger = logging.getLogger("ray")
    for h in {*logger.handlers, logging.lastResort}:
        if h is not None and h not in saved[0] and h is not saved[3]:
            h.close()
    logger.handlers, logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])
    logging.lastResort = saved[3]


def send_warnings_to(path: Path) -> None:
    """Makes Python warnings of this process append to `path` instead of stderr."""
    def show(message, category, filename, lineno, file=None, line=None):
        with open(path, "a") as f:
            f.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def progress_bars_off() -> list:
    """Turns off transformers' and huggingface_hub's progress bars in this process (their
    tqdm read TQDM_DISABLE when imported, which may have been before the sweep); returns
    the modules whose bars were on, for progress_bars_on."""
    turned = []
    try:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            turned.append(hf_logging)
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
            turned.append("huggingface_hub")
    except ImportError:
        pass
    return turned


def progress_bars_on(turned: list) -> None:
    """Turns back on the progress bars progress_bars_off turned off."""
    for m in turned:
        if m == "huggingface_hub":
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()
        else:
            m.enable_progress_bar()


@contextlib.contextmanager
def quiet_console(log_dir: Path, quiet: bool):
    """Within the block, when `quiet`: this process's warnings and Ray's log records below
    ERROR go to log_dir/driver.log, and the environment tells the workers started inside it
    (through the sweep's Ray runtime_env) to be quiet and log into `log_dir` (init_ray then
    keeps Ray workers' output off the console). Restores everything after."""
    if not quiet:
        yield
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    # Tune's advice on checkpoint frequency (every report carries encodings on purpose)
    # and Tune's new output engine, which prints its experiment box and paths even at
    # verbose=0 (the old one prints nothing there)
    env = {QUIET_ENV: "quiet", LOG_DIR_ENV: str(log_dir.resolve()), **QUIET_LIBRARY_ENV,
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", "RAY_AIR_NEW_OUTPUT": "0"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_show = warnings.showwarning
    os.environ.update(env)
    progress_bars = progress_bars_off()
    send_warnings_to(log_dir / "driver.log")
    saved_logging = route_ray_logging(log_dir / "driver.log")
    try:
        yield
    finally:
        restore_ray_logging(saved_logging)
        progress_bars_on(progress_bars)
        warnings.showwarning = saved_show
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
