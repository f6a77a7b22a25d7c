"""Security ("Hardening" item 6): where seedtape listens, who may use it, and what it never writes down.

Everything runs on 127.0.0.1. The tests that ask for a non-loopback --host expect a refusal
before anything binds, and hold the port on 127.0.0.1 and ::1 themselves meanwhile, so that
even a seedtape that failed to refuse could not bind the wildcard address.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from conftest import chat, client
from support import assert_openai_error, entries, http_request, plaintext, run_cli

from seedtape.proxy.headers import is_safe
from seedtape.proxy.tapes.store import Store

TOKEN = "tok-SEEDTAPE-auth-9c41e7"
API_KEY = "sk-SECRET-authz-7f3a0c"
REQUEST_SECRETS = {  # sent by the client; each value is distinctive so a grep finds any copy
    "api-key": "SECRET-apikey-91bc44",
    "x-api-key": "SECRET-xapikey-22de55",
    "OpenAI-Organization": "org-SECRET-441166",
    "OpenAI-Project": "proj_SECRET-552277",
    "Cookie": "session=SECRET-cookie-663388",
    "Proxy-Authorization": "Basic SECRET-proxyauth-774499",
}
UPSTREAM_SECRETS = [  # sent by the upstream on top of the fake's own set-cookie and openai-organization
    ("set-cookie", "sid=UPSTREAM-SECRET-cookie-1; HttpOnly"),
    ("openai-project", "proj_UPSTREAM-SECRET-2"),
    ("x-api-key", "UPSTREAM-SECRET-xapikey-3"),
    ("authorization", "Bearer UPSTREAM-SECRET-authz-4"),
    ("proxy-authorization", "Basic UPSTREAM-SECRET-proxyauth-5"),
    ("x-upstream-session", "UPSTREAM-SECRET-session-6"),  # not on the allowlist either
]
FAKE_UPSTREAM_SECRETS = ("org-secret-fake", "secret-cookie")  # what tests/fake_upstream.py always sends
EVERY_SECRET = (TOKEN, API_KEY, *REQUEST_SECRETS.values(), *(v for _, v in UPSTREAM_SECRETS), *FAKE_UPSTREAM_SECRETS)


def seedtape(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """support.run_cli, where a failing command fails the test unless ``check=False``."""
    return run_cli(*args, check=check, **kw)


def tree_bytes(path: Path) -> bytes:
    """Every file's bytes, and for a store its entries decompressed too (a secret must not hide in a zstd frame)."""
    raw = b"".join(f.read_bytes() for f in sorted(Path(path).rglob("*")) if f.is_file())
    return raw + plaintext(path) if (Path(path) / "data.mdb").is_file() else raw


def send_upstream_headers(upstream, extra: list[tuple[str, str]]) -> None:
    """Make the fake upstream add ``extra`` to every answer (JSON, streams and errors)."""
    base = upstream.server.RequestHandlerClass

    class Handler(base):
        def end_headers(self):
            for k, v in extra:
                self.send_header(k, v)
            super().end_headers()

    upstream.server.RequestHandlerClass = Handler


BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "token please"}]}


# -- where it listens ------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        table = Path("/proc/net") / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            cols = line.split()
            addr, hport = cols[1].split(":")
            if int(hport, 16) != port or cols[3] != "0A":  # 0A = LISTEN
                continue
            if width == 8:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
            else:
                raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8))
                found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc/net/tcp")
def test_binds_127_0_0_1_by_default(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store)
    assert p.base_url == f"http://127.0.0.1:{p.port}/v1"
    assert listening_addresses(p.port) == {"127.0.0.1"}


@pytest.fixture
def held_port():
    """A port held on 127.0.0.1 and ::1: a wildcard bind on it fails, so nothing can be exposed by accident."""
    v4 = socket.socket()
    v4.bind(("127.0.0.1", 0))
    v4.listen()
    port = v4.getsockname()[1]
    v6 = None
    try:
        v6 = socket.socket(socket.AF_INET6)
        v6.bind(("::1", port))
        v6.listen()
    except OSError:
        if v6 is not None:
            v6.close()
        v6 = None
    yield port
    v4.close()
    if v6 is not None:
        v6.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "[::]", "example.com"])
@pytest.mark.parametrize("token_args", [[], ["--auth-token", ""]], ids=["no-token", "empty-token"])
def test_non_loopback_host_without_token_is_refused_before_binding(tmp_path, held_port, host, token_args):
    out = seedtape("serve", "--host", host, "--port", str(held_port), "--store", str(tmp_path / "store"),
                   "--upstream", "http://127.0.0.1:9", *token_args, check=False, text=True)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "--auth-token" in out.stderr and host in out.stderr and "seedtape-token" in out.stderr
    assert "Traceback" not in out.stderr
    assert "OPENAI_BASE_URL" not in out.stdout + out.stderr  # it never started
    assert not (tmp_path / "store").exists()  # refused before anything else happened


def test_empty_token_from_the_environment_is_refused_too(tmp_path, held_port):
    out = seedtape("serve", "--host", "0.0.0.0", "--port", str(held_port), "--store", str(tmp_path / "store"),
                   check=False, text=True, env={"SEEDTAPE_AUTH_TOKEN": ""})
    assert out.returncode == 2 and "--auth-token" in out.stderr


# -- who may use it --------------------------------------------------------------------------


def test_auth_token_is_enforced_and_never_forwarded(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--auth-token", TOKEN)
    url = p.base_url + "/chat/completions"
    wrong = "tok-WRONG-value-should-not-echo"
    for headers in ({}, {"seedtape-token": wrong}, {"seedtape-token": ""}, {"seedtape-token": TOKEN + "x"},
                    {"seedtape-token": TOKEN[:-1]}, {"seedtape-token": TOKEN.upper()},
                    {"authorization": f"Bearer {TOKEN}"}, {"x-seedtape-token": TOKEN}):
        r = httpx.post(url, json=BODY, headers=headers)
        err = assert_openai_error(r, 401, "seedtape_unauthorized")
        assert "seedtape-token" in err["message"]
        assert wrong not in r.text and TOKEN not in r.text
    # every path needs it, not only the recorded endpoints
    assert_openai_error(httpx.get(p.base_url + "/models"), 401, "seedtape_unauthorized")
    assert_openai_error(httpx.request("OPTIONS", url), 401, "seedtape_unauthorized")
    assert upstream.log == []  # nothing unauthenticated went upstream

    # the SDK gets a readable exception, without retries
    bare = openai.OpenAI(base_url=p.base_url, api_key=API_KEY, max_retries=3)
    with pytest.raises(openai.AuthenticationError) as info:
        bare.chat.completions.create(**BODY)
    assert "seedtape-token" in str(info.value)
    assert upstream.log == []

    # with the token it works (the header name in any case)
    good = client(p, default_headers={"SeedTape-Token": TOKEN})
    assert chat(good, "token please").headers["seedtape-status"] == "recorded"
    assert chat(good, "token please").headers["seedtape-status"] == "hit"
    assert httpx.get(p.base_url + "/models", headers={"seedtape-token": TOKEN}).status_code == 200
    assert len(upstream.log) == 1
    for r in upstream.log:
        assert "seedtape-token" not in {k.lower() for k in r["headers"]}
        assert TOKEN not in json.dumps(r)
    p.stop()
    assert TOKEN not in p.output and wrong not in p.output
    assert TOKEN.encode() not in tree_bytes(Path(store))


def test_token_is_stripped_in_every_mode_and_for_streams(upstream, store, proxies):
    p = proxies("--upstream", upstream.url, "--store", store, "--auth-token", TOKEN)
    for mode in ("passthrough", "record", "audit", "auto"):
        c = openai.OpenAI(base_url=p.url(mode=mode), api_key=API_KEY, max_retries=0,
                          default_headers={"seedtape-token": TOKEN})
        assert chat(c, f"mode {mode}").parse().choices[0].message.content
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"s {mode}"}],
                                           stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert httpx.get(p.url(mode="passthrough") + "/models", headers={"seedtape-token": TOKEN}).status_code == 200
    assert len(upstream.log) >= 8
    for r in upstream.log:
        assert "seedtape-token" not in {k.lower() for k in r["headers"]} and TOKEN not in json.dumps(r)


def test_not_an_open_proxy(upstream, store, proxies):
    """CONNECT and absolute-form targets never reach any host but --upstream (with or without the token)."""
    from fake_upstream import FakeUpstream

    with FakeUpstream() as victim:
        p = proxies("--upstream", upstream.url, "--store", store, "--auth-token", TOKEN)
        for token in (b"", b"seedtape-token: " + TOKEN.encode() + b"\r\n"):
            r = http_request(p.port, b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
                             % (victim.port, victim.port, token), timeout=10)
            assert r.status in (400, 401), r
            assert b'"error"' in r.body
        r = httpx.get(f"{p.origin}/_fake/log", headers={"seedtape-token": TOKEN})  # reaches --upstream only
        answer = http_request(p.port, b"GET http://127.0.0.1:%d/v1/models HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                              b"seedtape-token: %s\r\nConnection: close\r\n\r\n" % (victim.port, victim.port, TOKEN.encode()),
                              timeout=10, until_close=True)
        assert answer.status == 200 and r.status_code == 200
        assert victim.log == []
        # the fake upstream logs only POSTs: send one absolute-form POST and find it at --upstream
        body = json.dumps(BODY).encode()
        http_request(p.port, b"POST http://127.0.0.1:%d/v1/chat/completions HTTP/1.1\r\nHost: x\r\nseedtape-token: %s\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (victim.port, TOKEN.encode(), len(body), body),
                     timeout=10, until_close=True)
        assert victim.log == [] and len(upstream.log) == 1


# -- what it never writes down ---------------------------------------------------------------


def test_secret_headers_never_reach_store_export_events_show_or_log(upstream, store, proxies, tmp_path):
    send_upstream_headers(upstream, UPSTREAM_SECRETS)
    p = proxies("--upstream", upstream.url, "--store", store, "--auth-token", TOKEN)
    headers = {"seedtape-token": TOKEN, **REQUEST_SECRETS}
    c = openai.OpenAI(base_url=p.base_url, api_key=API_KEY, max_retries=0, default_headers=headers)
    assert chat(c, "keep my secrets").headers["seedtape-status"] == "recorded"
    assert chat(c, "keep my secrets").headers["seedtape-status"] == "hit"
    stream = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "secret stream"}],
                                       stream=True, stream_options={"include_usage": True})
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert c.completions.create(model="gpt-3.5-turbo-instruct", prompt="secret prompt").choices[0].text
    assert c.embeddings.create(model="text-embedding-3-small", input="secret input").data
    # an audit event: the same request, live, compared with its recording
    audit = openai.OpenAI(base_url=p.url(mode="audit"), api_key=API_KEY, max_retries=0, default_headers=headers)
    assert chat(audit, "keep my secrets").headers["seedtape-divergence"].startswith("match")
    # the paths that log: an upstream error, a refusal, a passthrough
    upstream.fail_next = [500]
    with pytest.raises(openai.InternalServerError):
        chat(c, "upstream fails")
    r = httpx.post(p.base_url + "/chat/completions", content=b"{bad", headers={**headers, "authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400
    assert httpx.get(p.base_url + "/models", headers={**headers, "authorization": f"Bearer {API_KEY}"}).status_code == 200
    p.stop()

    # the upstream did get the client's credentials (seedtape forwards them), but never the token
    first = {k.lower(): v for k, v in upstream.log[0]["headers"].items()}
    assert first["authorization"] == f"Bearer {API_KEY}" and first["api-key"] == REQUEST_SECRETS["api-key"]
    assert all("seedtape-token" not in {k.lower() for k in r["headers"]} for r in upstream.log)

    with Store(store, readonly=True) as st_:
        recorded = list(st_.entries())
        keys = st_.keys()
        events = st_.events()
    assert len(recorded) == 4 and len(events) == 1  # chat, stream, completion, embedding; one audit event
    for e in recorded:
        assert all(is_safe(k) for k, _ in e.headers), e.headers
        assert "x-upstream-session" not in dict(e.headers)

    tapes = tmp_path / "tapes"
    seedtape("export", str(tapes), "--store", store)
    places = {
        "store files": tree_bytes(Path(store)),
        "export tree": tree_bytes(tapes),
        "events --json": seedtape("events", "--json", "--store", store).stdout,
        "ls --json": seedtape("ls", "--json", "--store", store).stdout,
        "show --json": b"".join(seedtape("show", k, "--json", "--store", store).stdout for k in keys),
        "show": b"".join(seedtape("show", k, "--store", store).stdout for k in keys),
        "stats --json": seedtape("stats", "--json", "--store", store).stdout,
        "proxy output": p.output.encode(),
    }
    # the greps really read the recordings
    for where in ("store files", "export tree", "show --json", "show"):
        assert b"keep my secrets" in places[where], where
    assert b"keep my secrets" in places["ls --json"] and b'"verdict": "match"' in places["events --json"]
    assert b"key=" in places["proxy output"]
    for where, blob in places.items():
        for secret in EVERY_SECRET:
            assert secret.encode() not in blob, f"{secret!r} found in {where}"


def test_redact_header_and_fields(upstream, store, proxies, tmp_path):
    p = proxies("--upstream", upstream.url, "--store", store, "--ignore-field", "user",  # metadata enters the key
                "--redact-header", "X-Request-Id", "--redact-field", "request.body.metadata.customer",
                "--redact-field", "response.id")
    c = client(p)
    meta = {"customer": "cust-SECRET-4242", "run": "r1"}
    live = chat(c, "redact me", metadata=meta)
    assert live.headers["seedtape-status"] == "recorded"
    live_id, live_request_id = live.parse().id, live.headers["x-request-id"]
    assert live_id.startswith("chatcmpl-") and live_request_id.startswith("req_")  # the live answer is untouched
    again = chat(c, "redact me", metadata=meta)
    assert again.headers["seedtape-status"] == "hit"  # the key is of the real request: it still matches
    assert again.parse().id == "[scrubbed]"  # redacted fields replay redacted
    assert "x-request-id" not in again.headers
    assert again.parse().choices[0].message.content == live.parse().choices[0].message.content

    stream = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "redact stream"}],
                                       stream=True, metadata=meta)
    live_chunks = [ch for ch in stream]
    live_stream_id = live_chunks[0].id
    assert live_stream_id.startswith("chatcmpl-")
    replayed = list(c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "redact stream"}],
                                              stream=True, metadata=meta))
    assert replayed and {ch.id for ch in replayed} == {"[scrubbed]"}
    p.stop()

    recorded = entries(store)
    assert len(recorded) == 2
    for e in recorded:
        assert e.request["body"]["metadata"] == {"customer": "[scrubbed]", "run": "r1"}
        assert "x-request-id" not in dict(e.headers) and "content-type" in dict(e.headers)
        if e.format == "json":
            assert json.loads(e.body)["id"] == "[scrubbed]"
        else:
            chunks = [json.loads(line[6:]) for line in e.body.decode().splitlines()
                      if line.startswith("data: {")]
            assert chunks and {ch["id"] for ch in chunks} == {"[scrubbed]"}
    tapes = tmp_path / "tapes"
    seedtape("export", str(tapes), "--store", store)
    for where, blob in (("store", tree_bytes(Path(store))), ("export", tree_bytes(tapes))):
        for secret in ("cust-SECRET-4242", live_id, live_stream_id, live_request_id):
            assert secret.encode() not in blob, (secret, where)
        assert b"[scrubbed]" in blob


def test_redacted_fields_never_reach_a_miss_explanation(upstream, store, proxies):
    redact = ("--redact-field", "request.body.messages.*.content")
    rec = proxies("--upstream", upstream.url, "--store", store, *redact)
    chat(client(rec), "TOPSECRET-recorded prompt", temperature=0.7)
    rec.stop()
    rep = proxies("--mode", "replay", "--store", store, *redact)
    with pytest.raises(openai.NotFoundError) as info:  # same redacted field, another temperature: a miss
        chat(client(rep), "TOPSECRET-live prompt", temperature=0.2)
    message, header = str(info.value), info.value.response.headers["seedtape-miss"]
    assert "temperature: 0.7 != 0.2" in message and "temperature: 0.7 != 0.2" in header  # still explained
    assert "messages" not in message  # a redacted field is not a difference: both sides are [scrubbed]
    rep.stop()
    for where, text in (("error", message), ("header", header), ("log", rep.output)):
        assert "TOPSECRET" not in text, where


def test_a_bad_redact_field_is_a_usage_error(tmp_path):
    out = seedtape("serve", "--store", str(tmp_path / "store"), "--redact-field", "body.x", check=False, text=True)
    assert out.returncode == 2 and "request." in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000], ids=["022", "002", "000"])
def test_store_files_are_private_whatever_the_umask(upstream, tmp_path, proxies, umask):
    store = tmp_path / "fresh" / "store"
    old = os.umask(umask)  # inherited by the child, as a user's shell would pass it on
    try:
        p = proxies("--upstream", upstream.url, "--store", str(store))
    finally:
        os.umask(old)
    assert chat(client(p), "private").headers["seedtape-status"] == "recorded"
    audit = client(p, base_url=p.url(mode="audit"))
    chat(audit, "private")  # an audit event too: every kind of write
    p.stop()
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    files = list(store.iterdir())
    assert {f.name for f in files} >= {"data.mdb", "lock.mdb"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))

    # `seedtape import` into a new store, with the same umask
    tapes = tmp_path / "tapes"
    seedtape("export", str(tapes), "--store", str(store))
    other = tmp_path / "other" / "store"
    seedtape("import", str(tapes), "--store", str(other), umask=umask)
    assert stat.S_IMODE(other.stat().st_mode) == 0o700
    for f in other.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))


# -- --key-by-credential ----------------------------------------------------------------------

KEY_A = "sk-TEAM-A-secret-aaaa1111"
KEY_B = "sk-TEAM-B-secret-bbbb2222"
KEY_C = "azure-TEAM-C-secret-cccc3333"


def sdk(p, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.base_url, api_key=key, max_retries=0)


def test_key_by_credential_keeps_teams_apart(upstream, store, proxies, tmp_path):
    p = proxies("--upstream", upstream.url, "--store", store, "--key-by-credential")
    a1 = chat(sdk(p, KEY_A), "shared prompt")
    b1 = chat(sdk(p, KEY_B), "shared prompt")
    assert a1.headers["seedtape-status"] == "recorded"
    assert b1.headers["seedtape-status"] == "recorded"  # a miss for B, not A's answer
    assert a1.headers["seedtape-key"] != b1.headers["seedtape-key"]
    a2, b2 = chat(sdk(p, KEY_A), "shared prompt"), chat(sdk(p, KEY_B), "shared prompt")
    assert a2.headers["seedtape-status"] == b2.headers["seedtape-status"] == "hit"
    assert a2.headers["seedtape-key"] == a1.headers["seedtape-key"]
    assert b2.headers["seedtape-key"] == b1.headers["seedtape-key"]
    assert len(upstream.requests_to("/chat/completions")) == 2

    # the other credential headers count too (the same value in api-key or x-api-key is the same party);
    # no credential at all is one more party ("anonymous")
    url = p.base_url + "/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "shared prompt"}]}
    keys = {a1.headers["seedtape-key"], b1.headers["seedtape-key"]}
    for h, status in (({"api-key": KEY_C}, "recorded"), ({"x-api-key": KEY_C}, "hit"), ({}, "recorded")):
        r = httpx.post(url, json=body, headers=h)
        assert r.status_code == 200 and r.headers["seedtape-status"] == status, (h, r.headers)
        keys.add(r.headers["seedtape-key"])
        assert httpx.post(url, json=body, headers=h).headers["seedtape-status"] == "hit"
    assert len(keys) == 4
    # telemetry headers still never split a key
    noisy = openai.OpenAI(base_url=p.base_url, api_key=KEY_A, max_retries=0,
                          default_headers={"x-stainless-retry-count": "2", "user-agent": "other/1.0"})
    assert chat(noisy, "shared prompt").headers["seedtape-key"] == a1.headers["seedtape-key"]
    p.stop()

    tapes = tmp_path / "tapes"
    seedtape("export", str(tapes), "--store", store)
    for blob in (tree_bytes(Path(store)), tree_bytes(tapes), p.output.encode(),
                 seedtape("ls", "--json", "--store", store).stdout):
        for secret in (KEY_A, KEY_B, KEY_C):
            assert secret.encode() not in blob
    creds = {e.request.get("credential") for e in entries(store)}
    assert len(creds) == 4 and all(c and not any(k in c for k in (KEY_A, KEY_B, KEY_C)) for c in creds)


def test_credential_salt_makes_keys_portable_between_stores(upstream, tmp_path, proxies):
    salt = "shared-salt-S"
    stores = {n: str(tmp_path / n) for n in ("s1", "s2", "s3", "s4", "s5")}

    def key_in(store: str, *extra: str, mode: str = "auto") -> tuple[str, str]:
        p = proxies("--upstream", upstream.url, "--store", store, "--mode", mode, "--key-by-credential", *extra)
        try:
            raw = chat(sdk(p, KEY_A), "portable prompt")
            return raw.headers["seedtape-key"], raw.headers["seedtape-status"]
        finally:
            p.stop()

    k1, st1 = key_in(stores["s1"], "--credential-salt", salt)
    k2, _ = key_in(stores["s2"], "--credential-salt", salt)
    assert st1 == "recorded" and k1 == k2  # same salt, same key, whichever store
    # env SEEDTAPE_CREDENTIAL_SALT is the same setting
    p = proxies("--upstream", upstream.url, "--store", stores["s5"], "--key-by-credential",
                env={"SEEDTAPE_CREDENTIAL_SALT": salt})
    assert chat(sdk(p, KEY_A), "portable prompt").headers["seedtape-key"] == k1
    p.stop()

    # exported tapes replay in another store with the same salt
    tapes = tmp_path / "tapes"
    seedtape("export", str(tapes), "--store", stores["s1"])
    seedtape("import", str(tapes), "--store", stores["s3"])
    k3, st3 = key_in(stores["s3"], "--credential-salt", salt, mode="replay")
    assert (k3, st3) == (k1, "hit")
    with pytest.raises(openai.NotFoundError):  # without the salt the imported store's own random salt is used
        key_in(stores["s3"], mode="replay")

    # without --credential-salt every store has its own random salt: the keys differ
    ka, _ = key_in(stores["s4"])
    kb, _ = key_in(str(tmp_path / "s6"))
    assert ka != kb and k1 not in (ka, kb)
    assert key_in(stores["s4"])[0] == ka  # but each store's own salt is stable across restarts
