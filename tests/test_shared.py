"""The remote tier as the proxy uses it (seedtape/proxy/tapes/shared.py) and the store's outbox, on a real Redis."""

from __future__ import annotations

import pytest
from conftest import wait_for
from redis_support import redis  # noqa: F401 - fixture

from seedtape.proxy.tapes import shared as shared_module
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.remote import Remote, RemoteConfig, RemoteError
from seedtape.proxy.tapes.shared import SharedTier
from seedtape.proxy.tapes.store import Store


def entry(i: int, fp: str = "fp_1") -> TapeEntry:
    return TapeEntry(
        key=f"{i:064x}", fingerprint=fp, endpoint="chat.completions",
        request={"method": "POST", "path": "/v1/chat/completions", "body": {"i": i}},
        status=200, headers=[], body=b'{"n": %d}' % i, format="json", recorded_at=1000.0 + i,
    )


def test_the_outbox_marks_recordings_and_events_in_their_own_transaction(tmp_path):
    with Store(tmp_path / "s") as st:
        st.batch([st.replacing(entry(1), queue=True), st.replacing(entry(2)), st.adding_event({"verdict": "drift"}, queue=True)])
        items = st.queued()
        assert [(kind, what if kind == "entry" else what["verdict"]) for _, kind, what, _ in items] == [
            ("entry", entry(1).key),
            ("event", "drift"),
        ]
        assert TapeEntry.decode(items[0][3]).body == entry(1).body  # the bytes the store holds
        assert st.queued_count() == 2 == st.stats()["queued"]
        st.dequeue([m for m, *_ in items])
        assert st.queued() == [] and st.queued_count() == 0


def test_a_failed_step_leaves_no_marker(tmp_path):
    with Store(tmp_path / "s") as st:
        bad = entry(3)
        bad.body = None  # type: ignore[assignment]  # cannot be encoded: the step fails
        results = st.batch([st.replacing(bad, queue=True)])
        assert isinstance(results[0], Exception)
        assert st.queued_count() == 0


def tier(store: Store, url: str, readonly: bool = False) -> SharedTier:
    return SharedTier(store, Remote(RemoteConfig(url, timeout=1.0, readonly=readonly)), readonly)


def test_pushes_what_is_queued_and_finds_it_from_another_store(tmp_path, redis):  # noqa: F811
    with Store(tmp_path / "a") as a, Store(tmp_path / "b") as b:
        ta = tier(a, redis.url).start()
        try:
            a.batch([a.replacing(entry(i), queue=True) for i in range(5)] + [a.adding_event({"verdict": "drift"}, queue=True)])
            assert ta.push_queued() == 6 and a.queued_count() == 0
        finally:
            ta.stop()
        tb = tier(b, redis.url).start()
        try:
            got = tb.find(entry(3).key, None)
            assert got is not None and got.body == entry(3).body
            assert tb.find(entry(99).key, None) is None
            assert [e["verdict"] for e in tb.remote.events()] == ["drift"]
        finally:
            tb.stop()


def test_down_fails_fast_keeps_the_queue_and_pushes_it_when_back(tmp_path, redis, monkeypatch):  # noqa: F811
    monkeypatch.setattr(shared_module, "RETRY_SECONDS", 0.1)
    with Store(tmp_path / "a") as st:
        t = tier(st, redis.url).start()
        try:
            redis.stop()
            with pytest.raises(RemoteError):
                t.find(entry(1).key, None)  # the first call finds it gone ...
            real_get = t.remote.get
            monkeypatch.setattr(t.remote, "get", lambda *a: pytest.fail("the remote was asked while down"))
            with pytest.raises(RemoteError):
                t.find(entry(2).key, None)  # ... later ones fail at once while it is down, without asking
            monkeypatch.setattr(t.remote, "get", real_get)
            st.batch([st.replacing(entry(i), queue=True) for i in range(3)])
            assert t.push_queued() == 0 and st.queued_count() == 3  # kept on disk
            redis.start()
            assert wait_for(lambda: st.queued_count() == 0, timeout=10)  # the watcher pushed them
            assert not t.down_reason
            assert sorted(t.remote.keys()) == sorted(entry(i).key for i in range(3))
        finally:
            t.stop()


def test_a_read_only_tier_queues_nothing(tmp_path, redis):  # noqa: F811
    with Store(tmp_path / "a") as st:
        t = tier(st, redis.url, readonly=True).start()
        try:
            assert not t.queues
            assert t.push_queued() == 0
        finally:
            t.stop()


def test_a_bad_remote_entry_is_a_miss_not_an_outage(tmp_path, redis):  # noqa: F811
    import redis as redislib

    with Store(tmp_path / "a") as st:
        t = tier(st, redis.url).start()
        try:
            t.remote.put(entry(7))
            r = redislib.Redis.from_url(redis.url)
            k = next(iter(r.scan_iter(match="seedtape:e:*")))
            r.setrange(k, 40, b"XXXX")  # damage it: the checksum no longer matches
            r.close()
            assert t.find(entry(7).key, None) is None
            assert not t.down_reason
        finally:
            t.stop()
