"""The persistent miss index (tapes/missindex.py): stable features, bands, kept current by every write."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from seedtape.proxy.explain import nearest
from seedtape.proxy.key.canonical import canonicalize
from seedtape.proxy.tapes import missindex
from seedtape.proxy.tapes import store as store_module
from seedtape.proxy.tapes.entry import TapeEntry
from seedtape.proxy.tapes.store import SCHEMA_VERSION, Store

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "weather",
    "paris",
    "tomorrow",
    "summary",
    "article",
    "cats",
    "dogs",
    "pasta",
    "recipe",
    "python",
    "code",
    "review",
    "bug",
    "fix",
    "plan",
    "trip",
    "budget",
    "email",
    "draft",
    "poem",
    "sonnet",
    "story",
    "robot",
    "ocean",
    "mountain",
    "history",
    "science",
    "physics",
    "chemistry",
    "garden",
    "river",
    "city",
    "music",
    "guitar",
    "piano",
    "train",
    "station",
    "coffee",
    "bread",
    "cheese",
    "apple",
    "winter",
    "summer",
    "spring",
    "autumn",
]


def body(content="What will the weather be like in Paris tomorrow", model="gpt-4o", temperature=0.7, **extra):
    return {
        "model": model,
        "temperature": temperature,
        "seed": 1234,
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": content}],
        **extra,
    }


def canon(b, namespace="", path="/v1/chat/completions"):
    return canonicalize("POST", path, "", b, namespace=namespace)


def entry(c, fingerprint="fp_a", recorded_at=1_700_000_000.0):
    return TapeEntry(
        key=c.key,
        fingerprint=fingerprint,
        endpoint="chat.completions",
        request=c.to_json(),
        status=200,
        headers=[],
        body=b'{"choices": []}',
        model=str(c.body.get("model", "")),
        recorded_at=recorded_at,
        first_recorded_at=recorded_at,
    )


def prompt(i: int) -> dict:
    rnd = random.Random(i)
    return body(
        " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 60))) + f" #{i}",
        model=rnd.choice(("gpt-4o", "gpt-4o-mini", "gpt-4.1")),
        temperature=rnd.choice((0, 0.2, 0.7, 1)),
    )


def index_rows(st: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every (key, value) pair of the index databases."""
    out = {}
    with st.env.begin() as txn:
        for name in (b"near", b"paths"):
            db = st.env.open_db(name, txn=txn, create=False, dupsort=True, dupfixed=True)
            out[name.decode()] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db).iternext()]
    return out


@pytest.fixture
def st(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


# -- features and bands --------------------------------------------------------------------------


def test_features_are_the_same_in_another_process():
    request = canon(body(tools=[{"type": "function", "function": {"name": "f"}}]), namespace="ns").to_json()
    script = (
        "import json, sys; from seedtape.proxy.tapes import missindex; "
        "r = json.loads(sys.stdin.read()); "
        "print(json.dumps([sorted(missindex.features(r)), [b.hex() for b in missindex.bands(r)]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    ).stdout
    feats, bands = json.loads(out)
    assert feats == sorted(missindex.features(request))
    assert bands == [b.hex() for b in missindex.bands(request)]


def test_features_name_leaves_words_and_request_parts():
    a = missindex.features(canon(body()).to_json())
    assert len(a) > 15
    b = missindex.features(canon(body(temperature=0.2)).to_json())
    assert len(a ^ b) == 2  # temperature=0.7 out, temperature=0.2 in
    ns = missindex.features(canon(body(), namespace="x").to_json())
    assert len(a ^ ns) == 2
    assert missindex.jaccard(a, a) == 1.0 and 0.8 < missindex.jaccard(a, b) < 1.0


def test_bands_one_per_band_of_eight_bytes_and_near_requests_share_most():
    a = missindex.bands(canon(prompt(1)).to_json())
    assert len(a) == missindex.BANDS and {len(x) for x in a} == {8} and [x[0] for x in a] == list(range(missindex.BANDS))
    assert a == missindex.bands(canon(prompt(1)).to_json())
    edited = prompt(1)
    edited["temperature"] = 0.35
    assert len(set(a) & set(missindex.bands(canon(edited).to_json()))) >= missindex.BANDS // 2
    other_path = canon(prompt(1), path="/v1/other").to_json()
    assert not set(a) & set(missindex.bands(other_path))  # the path enters every band
    assert missindex.signature([]).shape == (missindex.SIGNATURE,)


def test_key_ids_only_for_request_keys():
    assert missindex.key_id("ab" * 32) == bytes.fromhex("ab" * 8)
    assert missindex.key_id("not-a-key") is None and missindex.key_id("AB" * 32) is None


# -- kept current by the store -------------------------------------------------------------------


def test_a_recording_enters_the_index_once_and_leaves_with_its_last_fingerprint(st, tmp_path):
    c = canon(body())
    st.put(entry(c, "fp_a"))
    st.put(entry(c, "fp_b", recorded_at=1_700_000_001.0))  # a second fingerprint: already indexed
    st.merge([entry(c, "fp_c", recorded_at=1_700_000_002.0)])
    rows = index_rows(st)
    kid = bytes.fromhex(c.key[:16])
    assert [v for _, v in rows["near"]] == [kid] * missindex.BANDS
    assert rows["paths"] == [(b"/v1/chat/completions", kid)]
    assert st.nearest(canon(body(temperature=0.2)).to_json())[0][0] == c.key
    assert st.delete(c.key, "fp_a") and st.delete(c.key, "fp_c")
    assert len(index_rows(st)["near"]) == missindex.BANDS  # fp_b is left
    assert st.delete(c.key, "fp_b")
    assert index_rows(st) == {"near": [], "paths": []}
    assert st.nearest(canon(body(temperature=0.2)).to_json()) == []


def test_batch_steps_index_too_and_an_undone_step_leaves_no_trace(st, tmp_path):
    ok, bad = canon(body()), canon(body(temperature=0.1))

    def failing(txn):
        st.replacing(entry(bad))(txn)
        raise RuntimeError("undone")

    out = st.batch([st.replacing(entry(ok)), failing])
    assert out[0] is None and isinstance(out[1], RuntimeError)
    kids = {v for _, v in index_rows(st)["near"]}
    assert kids == {bytes.fromhex(ok.key[:16])}


def test_recordings_of_another_process_are_found_without_a_rebuild(st, tmp_path):
    index = nearest.NearestIndex(st)
    st.put(entry(canon(body(temperature=0.3))))
    assert index.nearest(canon(body()).to_json())
    script = (
        "import sys; sys.path.insert(0, 'tests'); from test_missindex import *\n"
        f"with Store({str(tmp_path / 'store')!r}) as other:\n"
        "    c = canon(body(top_p=0.9)); other.put(entry(c)); print(c.key)"
    )
    k = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert index.nearest(canon(body(top_p=0.9, seed=1)).to_json())[0][0] == k


def make_old(path: Path, version: bytes = b"2") -> None:
    """Turn a store into one written by a seedtape before the miss index: no index databases, schema ``version``."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            for name in (b"near", b"paths"):
                txn.drop(env.open_db(name, txn=txn, dupsort=True, dupfixed=True), delete=True)
            txn.put(b"schema", version, db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


@pytest.mark.parametrize("version", [b"1", b"2"])
def test_an_older_store_explains_read_only_and_is_indexed_when_opened_for_writing(tmp_path, monkeypatch, version):
    path = tmp_path / "store"
    with Store(path) as s:
        s.merge([entry(canon(prompt(i))) for i in range(40)])
        near_key = canon(prompt(7)).key
    make_old(path, version)
    wanted = prompt(7)
    wanted["temperature"] = 0.35
    miss = canon(wanted)
    with Store(path, readonly=True) as ro:  # no index: a bounded scan, never a crash
        assert not ro.indexed
        expl = nearest.explain(ro, nearest.NearestIndex(ro), miss)
        assert expl.nearest[0].key == near_key and not expl.caveat
        monkeypatch.setattr(store_module, "UNINDEXED_SAMPLE", 10)
        monkeypatch.setattr(nearest, "UNINDEXED_SAMPLE", 10)
        expl = nearest.explain(ro, nearest.NearestIndex(ro), miss)
        assert "no miss index yet" in expl.text() and f"seedtape serve --store {path}" in expl.text()
        assert expl.to_json()["caveat"] == expl.caveat
    with Store(path) as rw:  # upgraded: the index is built once
        assert rw.indexed
        assert rw._read(lambda txn: txn.get(b"schema", db=rw._meta)) == str(SCHEMA_VERSION).encode()
    with Store(path, readonly=True) as ro:
        assert len(index_rows(ro)["paths"]) == 40
        expl = nearest.explain(ro, nearest.NearestIndex(ro), miss)
        assert ro.indexed and expl.nearest[0].key == near_key and not expl.caveat
        [change] = [str(c) for c in expl.nearest[0].changes]
        assert change.startswith("temperature: ") and change.endswith(" != 0.35")


# -- a large store: the right nearest, with bounded work ----------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "store"
    with Store(path) as s:
        for start in range(0, 20_000, 5000):
            s.merge([entry(canon(prompt(i)), recorded_at=1_700_000_000.0 + i) for i in range(start, start + 5000)])
    return path


def variant(i: int, **change) -> dict:
    b = prompt(i)
    for k, v in change.items():
        if k == "content":
            b["messages"][-1]["content"] = v(b["messages"][-1]["content"])
        else:
            b[k] = v
    return b


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"temperature": 0.35}, "temperature: "),
        ({"content": lambda t: t.replace(" ", " very ", 1)}, "messages[1].content: "),
        ({"model": "o3-pro"}, "model: "),
    ],
    ids=["temperature", "edited-prompt", "model"],
)
def test_the_nearest_on_a_large_store_is_the_one_changed_and_few_entries_are_read(big, monkeypatch, change, expected):
    decoded = []
    real = TapeEntry.decode_header

    def counting(data):
        decoded.append(1)
        return real(data)

    def never(*a, **k):
        raise AssertionError("a miss must not read every recording")

    monkeypatch.setattr(TapeEntry, "decode_header", staticmethod(counting))
    monkeypatch.setattr(Store, "requests", never)
    monkeypatch.setattr(Store, "entries", never)
    with Store(big, readonly=True) as s:
        for i in (3, 4_321, 19_999):
            decoded.clear()
            expl = nearest.explain(s, nearest.NearestIndex(s), canon(variant(i, **change)))
            assert expl.nearest[0].key == canon(prompt(i)).key
            assert str(expl.nearest[0].changes[0]).startswith(expected)
            assert len(decoded) <= missindex.CANDIDATES + missindex.PATH_SAMPLE


def test_other_endpoints_and_namespaces_on_a_large_store(big):
    with Store(big, readonly=True) as s:
        expl = nearest.explain(s, nearest.NearestIndex(s), canon(prompt(5), namespace="other"))
        assert expl.nearest[0].key == canon(prompt(5)).key
        assert [str(c) for c in expl.nearest[0].changes] == ['namespace: (absent) != "other"']
        expl = nearest.explain(s, nearest.NearestIndex(s), canon({"model": "e", "input": "x"}, path="/v1/embeddings"))
        assert expl.nearest == []


def mapped_kib(store_path) -> int:
    """Resident KiB of this process's mappings of the store's data file (/proc/self/smaps)."""
    target = str((Path(store_path) / "data.mdb").resolve())
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip("\n").endswith(target)
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(sys.platform != "linux", reason="pages are released with madvise on Linux only")
def test_explaining_misses_leaves_none_of_the_store_mapped(big):
    with Store(big, readonly=True) as st:
        for i in range(20):
            assert st.get(canon(prompt(i)).key) is not None  # hits map pages...
        assert mapped_kib(big) > 0
        for i in range(50):
            assert st.nearest(canon(variant(i, temperature=0.35)).to_json())
        assert mapped_kib(big) == 0  # ...and a miss drops every one it or they touched (RSS does not grow)
        assert st.get(canon(prompt(1)).key) is not None  # still readable: pages come back on use
