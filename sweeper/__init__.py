"""sweeper: a distributed experiment sweeper for model quantization, built on Ray Tune."""

__version__ = "0.1.0"
