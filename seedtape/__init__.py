"""seedtape: a recording/replay proxy that makes OpenAI-style LLM calls reproducible."""

__version__ = "0.1.0"
