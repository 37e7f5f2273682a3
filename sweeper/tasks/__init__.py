"""Evaluations, one module each; importing this package registers them."""
from ..registry import TASKS
from .glue import GlueTask
from .lambada import LambadaTask, lambada
from .perplexity import WikiText2PPL, perplexity_windows, wikitext2_perplexity


def evaluate(model, config, ctx):
    """Runs the task registered for type(config) on `model`; returns its metrics dict."""
    return TASKS.for_config(config).fn(model, config, ctx)


__all__ = ["GlueTask", "LambadaTask", "WikiText2PPL", "evaluate", "lambada", "perplexity_windows",
           "wikitext2_perplexity"]
