"""Evaluations, one module each; importing this package registers them."""
from ..registry import TASKS
from .lambada import LambadaTask, lambada
from .perplexity import WikiText2PPL, perplexity_windows, wikitext2_perplexity


def evaluate(model, config, ctx):
    """Runs the task registered for type(config) on `model`; returns its metrics dict."""
    return TASKS.for_config(config).fn(model, config, ctx)


__all__ = ["LambadaTask", "WikiText2PPL", "lambada", "evaluate", "perplexity_windows", "wikitext2_perplexity"]
