"""seedtape: a recording/replay proxy that makes OpenAI-style LLM calls reproducible."""

__version__ = "0.1.0"


def serve(*args, **kwargs):
    """Run a real seedtape proxy for a block: ``with seedtape.serve(mode="replay", tapes=...) as proxy``.

    See seedtape.api.serve; imported lazily so ``import seedtape`` stays light.
    """
    from seedtape.api import serve as _serve

    return _serve(*args, **kwargs)
