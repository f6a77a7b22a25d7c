import pytest

from app import story, summarize

pytestmark = pytest.mark.seedtape


def test_summarize():
    assert summarize("seedtape records and replays OpenAI calls").strip()


def test_summarize_is_reproducible():
    assert summarize("the same question twice") == summarize("the same question twice")


def test_story_streams():
    assert len(story("a robot").split()) > 3


@pytest.mark.seedtape(namespace="billing")
def test_namespaced():
    assert summarize("seedtape records and replays OpenAI calls").strip()
