"""Importing TensorFlow and Intel Neural Compressor, which only the `tf` extra installs."""
from __future__ import annotations

import os

INSTALL_HINT = "pip install -e '.[tf]'"
# The tf extra's pins (pyproject.toml's [project.optional-dependencies] tf lists the same;
# tests/test_tf_gptj.py checks): what TF workers on a cluster install into their runtime_env.
TF_REQUIREMENTS = ("tensorflow-cpu==2.21.0", "neural-compressor==3.10", "prettytable>=3", "py-cpuinfo>=9",
                   "pydantic>=2", "pyyaml>=6", "psutil>=5", "setuptools==80.10.2")


class TFUnavailable(ImportError):
    """TensorFlow or neural-compressor is not installed here; the message is one line."""


ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def onednn_hint() -> str:
    """Returns "" when oneDNN's TF optimizations were asked for before TF was imported,
    else a sentence saying how to enable them (INT8 graphs need them)."""
    if os.environ.get(ONEDNN_ENV) == "1":
        return ""
    return (f" oneDNN is off in this process ({ONEDNN_ENV}={os.environ.get(ONEDNN_ENV)!r} when TensorFlow was"
            f" imported): set {ONEDNN_ENV}=1 before anything imports TensorFlow; INC's INT8 kernels need it.")


def load_triton_first() -> bool:
    """Imports triton (torch's kernel compiler) when it is installed and TensorFlow is not
    yet imported; returns whether triton is loaded. Both bundle LLVM: a process that loads
    TensorFlow and then triton (as transformers does lazily, through torch._dynamo, when a
    model is loaded) dies with SIGSEGV (seen: TF 2.21, triton 3.8); the other order works."""
    import importlib.util
    import sys

    if "triton" in sys.modules:
        return True
    if "tensorflow" in sys.modules or importlib.util.find_spec("triton") is None:
        return False
    import triton  # noqa: F401

    return True


def require_tf():
    """Returns the tensorflow module, or raises TFUnavailable saying how to install it."""
    # TF's C++ start-up chatter (oneDNN notices, CPU feature lines) is not for the console
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # INC's INT8 graphs need oneDNN's graph rewrite (it turns QuantizedMatMulWithBiasAnd-
    # Dequantize into a real kernel). TF leaves oneDNN off by default on CPUs without
    # AVX512/VNNI, and there every INT8 MatMul fails at run time ("Missing 0-th output"),
    # on TF 2.16 to 2.21 alike. Read once, when TF is first imported.
    os.environ.setdefault(ONEDNN_ENV, "1")
    load_triton_first()
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise TFUnavailable(f"TensorFlow is not installed ({exc}); install the tf extra: {INSTALL_HINT}") from None
    return tf


def require_inc():
    """Returns neural_compressor.tensorflow (Intel Neural Compressor's TF API), or raises
    TFUnavailable saying how to install it."""
    import sys

    require_tf()
    # INC's calibration reads TF's printed ranges by pointing the file descriptor of the
    # `sys.stderr` it saw at import time (a default argument) to a log file; where stderr is
    # replaced (pytest's capture, some consoles) that is not fd 2, TF's prints go elsewhere and
    # INC fails with "list index out of range". So it is imported facing the real stderr.
    seen, sys.stderr = sys.stderr, sys.__stderr__
    try:
        import neural_compressor.tensorflow as inc_tf
    except ImportError as exc:
        raise TFUnavailable(f"neural-compressor's TensorFlow API is not installed ({exc}); install the tf extra: "
                            f"{INSTALL_HINT}") from None
    finally:
        sys.stderr = seen
    return inc_tf


def tf_available() -> bool:
    """Returns whether TensorFlow and neural-compressor's TF API import here."""
    try:
        require_inc()
        return True
    except TFUnavailable:
        return False
