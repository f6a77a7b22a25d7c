import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_upstream import FakeUpstream
from proxyproc import ProxyProcess, wait_for  # noqa: F401 - tests import wait_for from here

API_KEY = "sk-seedtape-TEST-secret-0123456789abcdef"


@pytest.fixture
def upstream():
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def proxies():
    """Factory: proxies(*serve_args) starts a real `seedtape serve`; all are stopped after the test."""
    started: list[ProxyProcess] = []

    def start(*args: str, **kw) -> ProxyProcess:
        p = ProxyProcess(*args, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def client(proxy: ProxyProcess, **kw):
    import openai

    return openai.OpenAI(base_url=kw.pop("base_url", proxy.base_url), api_key=API_KEY, max_retries=kw.pop("max_retries", 0), **kw)


def async_client(proxy: ProxyProcess, **kw):
    import openai

    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=API_KEY, max_retries=kw.pop("max_retries", 0), **kw)


def chat(c, text: str = "hello", **kw):
    return c.chat.completions.with_raw_response.create(
        model=kw.pop("model", "gpt-4o-mini"), messages=[{"role": "user", "content": text}], **kw
    )
