"""The LMDB store (real LMDB in tmp_path) and the tape entry encoding."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import traceback
from collections import Counter
from pathlib import Path

import lmdb
import pytest

from seedtape.proxy.tapes.entry import _LEN, MAGIC, CorruptEntry, TapeEntry
from seedtape.proxy.tapes.store import SCHEMA_VERSION, Store, StoreError


def make_entry(key: str = "k" * 64, fingerprint: str = "fp_a", body: bytes = b'{"ok": true}', **kw) -> TapeEntry:
    fields = dict(
        key=key,
        fingerprint=fingerprint,
        endpoint="chat.completions",
        request={"v": 1, "method": "POST", "path": "/v1/chat/completions", "query": [], "namespace": "",
                 "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}},
        status=200,
        headers=[["content-type", "application/json"], ["x-request-id", "req_1"]],
        body=body,
        model="m",
    )
    fields.update(kw)
    return TapeEntry(**fields)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(path):
    with Store(path) as st:
        yield st


# -- round trips -------------------------------------------------------------------------------


def test_put_get_round_trip_keeps_body_bytes_exact(store):
    body = bytes(range(256)) * 3 + b"\r\n\x00tail"  # not UTF-8, NULs, CRLF: must come back byte for byte
    put = store.put(make_entry(body=body, format="sse", namespace="ns", upstream_ms=12.5, extra={"a": [1, 2]}))
    got = store.get(put.key)
    assert got is not None
    assert got.body == body
    assert got == put
    assert got.recorded_at > 0 and got.first_recorded_at == got.recorded_at and got.times_recorded == 1


def test_get_unknown_key_is_none(store):
    assert store.get("0" * 64) is None
    assert store.get("0" * 64, "fp_a") is None
    assert store.latest_fingerprint("0" * 64) is None
    assert store.fingerprints("0" * 64) == []


def test_newest_fingerprint_wins(store):
    key = sha("drift")
    store.put(make_entry(key, "fp_old", b"old", recorded_at=100.0))
    store.put(make_entry(key, "fp_new", b"new", recorded_at=200.0))
    assert store.latest_fingerprint(key) == "fp_new"
    assert store.get(key).body == b"new"
    # re-recording the old fingerprint makes it the newest again
    store.put(make_entry(key, "fp_old", b"old again", recorded_at=300.0))
    assert store.get(key).fingerprint == "fp_old"
    assert store.get(key).body == b"old again"


def test_pinned_fingerprint(store):
    key = sha("pinned")
    store.put(make_entry(key, "fp_a", b"a"))
    store.put(make_entry(key, "fp_b", b"b"))
    assert store.get(key, "fp_a").body == b"a"
    assert store.get(key, "fp_b").body == b"b"
    assert store.get(key, "fp_c") is None


def test_fingerprints_lists_only_this_keys_fingerprints(store):
    store.put(make_entry("abc", "fp_2"))
    store.put(make_entry("abc", "fp_1"))
    store.put(make_entry("abcd", "fp_3"))  # shares a prefix with "abc"
    store.put(make_entry("ab", "fp_4"))
    assert store.fingerprints("abc") == ["fp_1", "fp_2"]
    assert store.fingerprints("abcd") == ["fp_3"]
    assert store.fingerprints("ab") == ["fp_4"]


def test_find_by_prefix(store):
    keys = ["aa11" + "0" * 60, "aa22" + "0" * 60, "bb33" + "0" * 60]
    for k in keys:
        store.put(make_entry(k))
    assert store.find("aa") == keys[:2]
    assert store.find("aa2") == [keys[1]]
    assert store.find(keys[2]) == [keys[2]]
    assert store.find("cc") == []
    assert store.find("") == keys
    assert store.keys() == keys


def test_re_record_counts_and_keeps_first_recorded_at(store):
    key = sha("again")
    store.put(make_entry(key, "fp_a", b"1", recorded_at=100.0))
    store.put(make_entry(key, "fp_a", b"2", recorded_at=200.0))
    third = store.put(make_entry(key, "fp_a", b"3", recorded_at=300.0))
    got = store.get(key, "fp_a")
    assert got == third
    assert got.body == b"3"
    assert got.times_recorded == 3
    assert got.first_recorded_at == 100.0
    assert got.recorded_at == 300.0
    # another fingerprint of the same key has its own count
    store.put(make_entry(key, "fp_b", b"b", recorded_at=400.0))
    assert store.get(key, "fp_b").times_recorded == 1
    assert store.get(key, "fp_b").first_recorded_at == 400.0
    assert store.stats()["entries"] == 2


def test_persists_across_reopen(path):
    key = sha("persist")
    with Store(path) as st:
        st.put(make_entry(key, "fp_a", b"kept"))
    with Store(path, readonly=True) as st:
        assert st.get(key).body == b"kept"
        assert st.keys() == [key]
    with Store(path) as st:
        assert st.get(key, "fp_a").body == b"kept"
        assert st.stats()["entries"] == 1


def test_stats(store):
    store.put(make_entry(sha("1"), "fp_a"))
    store.put(make_entry(sha("1"), "fp_b"))
    store.put(make_entry(sha("2"), "fp_a"))
    s = store.stats()
    assert s["entries"] == 3
    assert s["request_keys"] == 2
    assert s["fingerprints"] == 2
    assert s["size_bytes"] > 0
    assert s["schema_version"] == SCHEMA_VERSION
    assert s["path"] == str(store.path)


def test_entries_iterates_every_entry_in_key_order(store):
    for k in (sha("x"), sha("y"), sha("z")):
        store.put(make_entry(k, "fp_1"))
        store.put(make_entry(k, "fp_0"))
    got = [(e.key, e.fingerprint) for e in store.entries()]
    assert got == sorted((k, fp) for k in (sha("x"), sha("y"), sha("z")) for fp in ("fp_0", "fp_1"))


# -- growth, schema, permissions ----------------------------------------------------------------


def test_map_grows_instead_of_failing(path):
    small = 64 * 1024
    big = os.urandom(100 * 1024)  # incompressible, and bigger than the initial map on its own
    with Store(path, map_size=small) as st:
        for i in range(40):  # ~4 MB in a 64 KiB map
            st.put(make_entry(sha(str(i)), body=big + str(i).encode()))
        assert st.stats()["map_size"] > 4 * 1024 * 1024
        assert st.stats()["entries"] == 40
    with Store(path, readonly=True, map_size=small) as st:  # reopening with the small size still reads it all
        assert all(st.get(sha(str(i))).body == big + str(i).encode() for i in range(40))


def _write_schema(path: Path, value: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=4)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"schema", value, db=meta)
    finally:
        env.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_unknown_schema_version_is_refused(path, readonly):
    with Store(path) as st:
        st.put(make_entry())
    _write_schema(path, b"99")
    with pytest.raises(StoreError) as info:
        Store(path, readonly=readonly)
    msg = str(info.value)
    assert "schema version 99" in msg
    assert f"reads versions 1 to {SCHEMA_VERSION}" in msg
    assert str(path) in msg
    assert "--store" in msg  # says what to do next


def test_schema_version_is_written_on_create(path):
    Store(path).close()
    env = lmdb.open(str(path), max_dbs=4, readonly=True)
    try:
        with env.begin() as txn:
            assert txn.get(b"schema", db=env.open_db(b"meta", txn=txn, create=False)) == str(SCHEMA_VERSION).encode()
    finally:
        env.close()


def _first_release_store(path: Path) -> str:
    """A store as seedtape 0.1.0 (commit d2c666a) wrote it: schema 1, dbs meta/entries/latest only."""
    key = sha("old")
    env = lmdb.open(str(path), max_dbs=4, mode=0o600)
    try:
        meta, entries, latest = (env.open_db(n) for n in (b"meta", b"entries", b"latest"))
        with env.begin(write=True) as txn:
            txn.put(b"schema", b"1", db=meta)
            txn.put(f"{key}\0fp_old".encode(), make_entry(key, "fp_old", b"old", recorded_at=1.0).encode(), db=entries)
            txn.put(key.encode(), b'{"fingerprint": "fp_old", "recorded_at": 1.0}', db=latest)
    finally:
        env.close()
    return key


def test_a_first_release_store_opens_for_writing(path):
    key = _first_release_store(path)
    with Store(path) as st:
        assert st.get(key).body == b"old"


def test_a_first_release_store_opens_read_only(path):
    key = _first_release_store(path)
    with Store(path, readonly=True) as st:
        assert st.get(key).body == b"old"


def test_a_foreign_lmdb_directory_is_refused_clearly(path):
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"something", b"else")
    env.close()
    with pytest.raises(StoreError, match="not a seedtape store"):
        Store(path, readonly=True)


def test_readonly_open_of_a_missing_store_says_so_and_creates_nothing(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(StoreError, match="no seedtape store at"):
        Store(missing, readonly=True)
    assert not missing.exists()


def test_store_is_private(tmp_path):
    old = os.umask(0o022)  # a typical umask: without explicit modes the store would be world-readable
    try:
        path = tmp_path / "nested" / "store"
        with Store(path) as st:
            st.put(make_entry())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    files = sorted(p.name for p in path.iterdir())
    assert files == ["data.mdb", "lock.mdb"]
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


# -- several processes at once ------------------------------------------------------------------

WRITERS = 3
PER_WRITER = 100


def _body(writer: int, i: int) -> bytes:
    return hashlib.sha256(f"{writer}/{i}".encode()).digest() * 64  # 2 KiB, distinct per entry


def _writer(path: str, writer: int, barrier) -> None:
    try:
        # Everyone opens first, then all write at once: the map grows while the others write.
        # (Opening while another process grows the map is a separate test below.)
        with Store(path, map_size=64 * 1024) as st:
            barrier.wait(60)
            for i in range(PER_WRITER):
                st.put(make_entry(sha(f"{writer}/{i}"), f"fp_w{writer}", _body(writer, i), model=f"w{writer}"))
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None


def _grow(path: str, tag: str, megabytes: int) -> None:
    """Write ``megabytes`` MB of entries from another process, growing the map."""
    with Store(path, map_size=64 * 1024) as st:
        for i in range(megabytes * 8):
            st.put(make_entry(sha(f"{tag}/{i}"), "fp_grow", os.urandom(128 * 1024)))


def grow_in_another_process(path: Path, tag: str, megabytes: int = 2) -> None:
    p = multiprocessing.get_context("spawn").Process(target=_grow, args=(str(path), tag, megabytes))
    p.start()
    p.join(120)
    if p.is_alive():
        p.kill()
        p.join()
    assert p.exitcode == 0


def test_several_processes_write_one_store(path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(str(path), w, barrier)) for w in range(WRITERS)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0] * WRITERS
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()

    with Store(path, readonly=True) as st:
        entries = list(st.entries())  # every value decodes
        assert len(entries) == WRITERS * PER_WRITER
        stats = st.stats()
        assert stats["map_size"] > 64 * 1024  # the map did grow while the writers ran
        counts = Counter((e.key, e.fingerprint) for e in entries)
        expected = {(sha(f"{w}/{i}"), f"fp_w{w}") for w in range(WRITERS) for i in range(PER_WRITER)}
        assert set(counts) == expected
        assert set(counts.values()) == {1}
        assert stats["entries"] == stats["request_keys"] == WRITERS * PER_WRITER
        for e in entries:
            w, i = next((w, i) for w in range(WRITERS) for i in range(PER_WRITER) if sha(f"{w}/{i}") == e.key)
            assert e.body == _body(w, i)
            assert e.times_recorded == 1 and e.model == f"w{w}"


def test_an_open_writer_adopts_growth_by_another_process(path):
    # (py-lmdb allows one environment per path and process: the reader case is the next test)
    with Store(path, map_size=64 * 1024) as st:
        st.put(make_entry(sha("mine"), body=b"mine"))
        grow_in_another_process(path, "other", megabytes=2)
        assert st.get(sha("other/0")) is not None
        st.put(make_entry(sha("mine again"), body=os.urandom(256 * 1024)))
        assert st.get(sha("mine again")) is not None
        assert st.stats()["entries"] == 2 + 2 * 8


def test_an_open_reader_adopts_growth_by_another_process(path):
    Store(path, map_size=64 * 1024).close()
    with Store(path, readonly=True, map_size=64 * 1024) as reader:
        assert reader.keys() == []
        grow_in_another_process(path, "other", megabytes=2)
        assert reader.get(sha("other/15")) is not None
        assert len(reader.keys()) == 2 * 8


@pytest.mark.parametrize("readonly", [False, True])
def test_opening_while_another_process_grows_the_map(path, monkeypatch, readonly):
    """open_db begins a transaction: it must adopt a map another process grew (raw MapResizedError before)."""
    with Store(path, map_size=64 * 1024) as st:  # exists, small
        st.put(make_entry())
    real_open = lmdb.open

    def open_then_grow(*args, **kwargs):
        env = real_open(*args, **kwargs)  # this process now knows the small map size ...
        grow_in_another_process(path, "race", megabytes=1)  # ... and another one outgrows it
        return env

    monkeypatch.setattr(lmdb, "open", open_then_grow)
    with Store(path, readonly=readonly, map_size=64 * 1024) as st:
        assert st.get(sha("race/0")) is not None


# -- tape entries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        make_entry(),
        make_entry(body=b"", status=204, headers=[]),
        make_entry(body=bytes(range(256)), format="sse", model="gpt-4o-mini", namespace="tests/é",
                   recorded_at=1.5, first_recorded_at=0.5, times_recorded=7, upstream_ms=None,
                   extra={"divergence": {"verdict": "match", "similarity": 1.0}}),
        make_entry(request={"body": {"messages": [{"content": "東京 🚀 \u0000"}]}}, upstream_ms=3.25),
    ],
)
def test_tape_entry_round_trip(entry):
    data = entry.encode()
    assert data.startswith(MAGIC)
    assert TapeEntry.decode(data) == entry
    assert TapeEntry.decode(memoryview(data)) == entry  # LMDB may hand out buffers


def test_tape_entry_header_is_readable_json():
    data = make_entry(body=b"\xff\xfe binary").encode()
    assert TapeEntry.decode_header(data)["fingerprint"] == "fp_a"
    assert TapeEntry.decode(data).body == b"\xff\xfe binary"


def test_a_schema_1_store_is_read_and_upgraded_when_written(path):
    import lmdb

    with Store(path) as st:
        st.put(make_entry())
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"1", db=env.open_db(b"meta", txn=txn))
    env.close()
    def marker() -> bytes:
        env = lmdb.open(str(path), max_dbs=8, readonly=True)
        try:
            with env.begin() as txn:
                return txn.get(b"schema", db=env.open_db(b"meta", txn=txn, create=False))
        finally:
            env.close()

    with Store(path, readonly=True) as st:  # read as it is
        assert st.get("k" * 64) is not None
    assert marker() == b"1"
    with Store(path) as st:  # opened to write: marked 3, so an older seedtape refuses it as a whole
        st.put(make_entry(fingerprint="fp_b"))
    assert marker() == b"3" and SCHEMA_VERSION == 3


def test_every_truncation_is_a_corrupt_entry():
    data = make_entry(body=b'{"choices": []}').encode()
    for n in range(len(data)):
        with pytest.raises(CorruptEntry):
            TapeEntry.decode(data[:n])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"XX1" + b"\x00" * 8,
        make_entry().encode() + b"trailing",
        MAGIC + _LEN.pack(4) + b"\xff\xfe\xfd\xfc" + _LEN.pack(0),  # header is not JSON
        MAGIC + _LEN.pack(2) + b"{}",  # body length missing
    ],
)
def test_malformed_data_is_a_corrupt_entry(data):
    with pytest.raises(CorruptEntry):
        TapeEntry.decode(data)


@pytest.mark.parametrize("head", [b"[]", b"{}", b'{"zzz": 1}'])
def test_json_header_that_is_not_an_entry_is_a_corrupt_entry(head):
    """Not a TypeError from cls(**meta): callers catch CorruptEntry."""
    with pytest.raises(CorruptEntry):
        TapeEntry.decode(MAGIC + _LEN.pack(len(head)) + head + _LEN.pack(0))


def test_tape_entry_with_lone_surrogate_in_request_round_trips():
    """"\\ud800" is valid JSON but not UTF-8: the header must still encode."""
    entry = make_entry(request={"body": {"input": "\ud800"}})
    assert TapeEntry.decode(entry.encode()) == entry


def test_a_recording_committed_late_never_has_a_first_time_after_its_own(store):
    """Two processes record one key at once: the one stamped earlier may commit second (found by the
    three-proxy test: its export then failed import's check that first_recorded_at <= recorded_at)."""
    key = sha("race")
    store.put(make_entry(key, "fp_a", b"later", recorded_at=200.0))
    got = store.put(make_entry(key, "fp_a", b"earlier", recorded_at=150.0))
    assert got.first_recorded_at == 150.0 <= got.recorded_at
    assert store.get(key, "fp_a").times_recorded == 2


def test_get_hands_out_a_decoded_entry_again_only_while_its_bytes_are_unchanged(tmp_path, monkeypatch):
    with Store(tmp_path / "s") as st:
        st.put(make_entry(body=b'{"n": 1}'))
        decodes = []
        real = TapeEntry.decode
        monkeypatch.setattr(TapeEntry, "decode", staticmethod(lambda raw: decodes.append(1) or real(raw)))
        first = st.get("k" * 64)
        assert st.get("k" * 64) is first and st.get("k" * 64, "fp_a") is first
        assert len(decodes) == 1  # a repeated hit is not decoded again
        st.put(make_entry(body=b'{"n": 2}'))  # re-recorded: new bytes under the same key
        assert st.get("k" * 64).body == b'{"n": 2}'
        st.put(make_entry(fingerprint="fp_b", body=b'{"n": 3}'))  # a newer fingerprint is served
        assert st.get("k" * 64).body == b'{"n": 3}'
        st.delete("k" * 64, "fp_b")
        st.delete("k" * 64, "fp_a")
        assert st.get("k" * 64) is None


def test_the_decoded_entries_kept_are_bounded(tmp_path):
    from seedtape.proxy.tapes import store as store_module

    with Store(tmp_path / "s") as st:
        for i in range(store_module.DECODED_ENTRIES + 50):
            st.put(make_entry(key=f"{i:064x}"))
            assert st.get(f"{i:064x}") is not None
        st.put(make_entry(key="b" * 64, body=os.urandom(store_module.DECODED_MAX_BYTES + 1)))  # incompressible
        assert st.get("b" * 64) is not None
        assert len(st._decoded) == store_module.DECODED_ENTRIES
        assert b"b" * 64 + b"\0fp_a" not in st._decoded  # too big to keep
