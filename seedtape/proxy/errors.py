"""Errors that seedtape itself answers with, in OpenAI's error shape.

SDKs turn ``{"error": {"message", "type", "code"}}`` into a readable exception.
Statuses are chosen outside the ones SDKs retry (408, 409, 429, >= 500), or
carry ``x-should-retry: false``, so a refusal fails fast instead of retrying.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SeedtapeError:
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps(
            {"error": {"message": self.message, "type": "seedtape_error", "code": self.code, "param": None}}
        ).encode()

    def all_headers(self) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "x-should-retry": "false",
            "seedtape-error": self.code,
            **self.headers,
        }


def replay_miss(key: str, path: str, detail: str = "", how_to_record: str = "") -> SeedtapeError:
    why = f" {detail}" if detail else ""
    how = how_to_record or (
        "To record it, run the proxy with --mode auto or --mode record against a live upstream and send the request again."
    )
    return SeedtapeError(404, "replay_miss", f"seedtape replay miss: no recording for request key {key} ({path}).{why} {how}")


def unknown_response(response_id: str, action: str, how_to_record: str = "") -> SeedtapeError:
    how = how_to_record or "Record the call that created it with --mode auto or --mode record first."
    return SeedtapeError(
        404, "replay_miss", f"seedtape replay miss: no recorded response has the id {response_id} ({action}). {how}"
    )


def bad_request(reason: str) -> SeedtapeError:
    return SeedtapeError(400, "invalid_request", f"seedtape could not read the request: {reason}.")


def http2_cleartext() -> SeedtapeError:
    return SeedtapeError(
        505,
        "http_version_not_supported",
        "seedtape speaks HTTP/1.1 on its plain-HTTP port; HTTP/2 with prior knowledge is not "
        "supported: use HTTP/1.1 (every OpenAI SDK does).",
    )


def not_replayable(path: str, reason: str) -> SeedtapeError:
    return SeedtapeError(
        400,
        "not_replayable",
        f"seedtape is in replay mode and never contacts the upstream, but {path} {reason}. Use --mode auto to forward it.",
    )


def upstream_unreachable(upstream: str, reason: str) -> SeedtapeError:
    return SeedtapeError(
        502,
        "upstream_unreachable",
        f"seedtape could not reach the upstream {upstream}, or lost it before a complete answer: {reason}. "
        "Check --upstream and the network, or use --mode replay to serve recordings offline.",
    )


def remote_unreachable(remote: str, reason: str, key: str) -> SeedtapeError:
    return SeedtapeError(
        424,
        "remote_unreachable",
        f"seedtape is in replay mode and has no local recording for request key {key}, and the remote tier "
        f"could not be searched ({reason or remote}). Nothing was sent upstream; retry when the remote answers "
        "(or pull its recordings with `seedtape pull`).",
    )


def internal(reason: str) -> SeedtapeError:
    return SeedtapeError(
        500,
        "seedtape_internal_error",
        f"seedtape failed internally and did not contact the upstream: {reason}. This is a bug; the proxy log has details.",
    )


def upstream_timeout(upstream: str, seconds: float) -> SeedtapeError:
    return SeedtapeError(
        504,
        "upstream_timeout",
        f"seedtape gave up on the upstream {upstream}: no answer within {seconds:g} s. "
        "Nothing was recorded; raise --upstream-timeout for slower calls.",
    )


def too_large(why: str, limit: int) -> SeedtapeError:
    return SeedtapeError(
        413, "request_too_large", f"seedtape refuses request bodies over {limit} bytes ({why}); raise --max-body."
    )


def no_api_key(upstream: str, mode: str) -> SeedtapeError:
    return SeedtapeError(
        401,
        "seedtape_no_api_key",
        f"seedtape would send this request to the upstream {upstream} (mode {mode}), "
        "but it carries seedtape's placeholder API key, which replay alone may use: set OPENAI_API_KEY "
        "(AZURE_OPENAI_API_KEY for Azure) to record it. The placeholder never reaches the upstream.",
    )


def unauthorized() -> SeedtapeError:
    return SeedtapeError(
        401,
        "seedtape_unauthorized",
        "seedtape requires its auth token: send it in the seedtape-token header (the proxy was started with --auth-token).",
    )
