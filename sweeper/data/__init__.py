"""Dataset resolution: a local data folder first, the Hugging Face hub second."""
from .wikitext import TextSplit, data_dirs, load_training_text, load_wikitext

__all__ = ["TextSplit", "data_dirs", "load_training_text", "load_wikitext"]
