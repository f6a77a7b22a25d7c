"""Per-request mode and namespace in the base URL path."""

import httpx
import pytest
from conftest import chat, client

from seedtape.proxy.key.routing import Overrides, RoutingError, prefix, split
from seedtape.proxy.modes import Mode


def test_split_and_prefix_round_trip():
    assert split("/v1/chat/completions") == (Overrides(), "/v1/chat/completions")
    p = prefix("replay", "tests/test_a.py::test x")
    over, rest = split(p + "/v1/chat/completions?x=1")
    assert over == Overrides(Mode.REPLAY, "tests/test_a.py::test x") and rest == "/v1/chat/completions?x=1"
    assert prefix() == ""


@pytest.mark.parametrize("bad", ["/_seedtape/mode=bogus/v1", "/_seedtape/color=red/v1", "/_seedtape/mode/v1"])
def test_bad_prefixes_are_refused(bad):
    with pytest.raises(RoutingError):
        split(bad)


def test_prefix_sets_mode_and_namespace_per_request(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)  # the proxy itself is in auto mode
    base = p.origin
    a = client(p, base_url=f"{base}{prefix(namespace='a')}/v1")
    assert chat(a, "routed").headers["seedtape-status"] == "recorded"
    assert upstream.log[-1]["path"] == "/v1/chat/completions"  # the prefix is never forwarded
    replay_b = client(p, base_url=f"{base}{prefix('replay', 'b')}/v1")
    with pytest.raises(Exception) as info:
        chat(replay_b, "routed")
    assert "replay miss" in str(info.value)
    assert len(upstream.log) == 1  # replay never went upstream
    assert chat(client(p, base_url=f"{base}{prefix('replay', 'a')}/v1"), "routed").headers["seedtape-status"] == "hit"
    r = httpx.post(f"{base}/_seedtape/mode=nope/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 400 and "mode=" in r.json()["error"]["message"]
