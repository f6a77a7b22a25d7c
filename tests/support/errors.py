"""What a seedtape error looks like to a client."""

from __future__ import annotations

import json

SEEDTAPE_ERROR_FIELDS = {"message", "type", "code", "param"}


def _parts(r: object) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of an httpx/httpx2 response, an SDK's APIStatusError
    (its ``.response``), a RawResponse or any object with ``status``, ``headers`` and ``body``,
    or a (status, headers, body) tuple."""
    if isinstance(r, BaseException):  # openai.APIStatusError and friends carry the response
        r = r.response
    if hasattr(r, "status_code"):
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content
    if isinstance(r, tuple):
        status, headers, body = r
    else:
        status, headers, body = r.status, r.headers, r.body
    return status, {k.lower(): v for k, v in dict(headers).items()}, body


def assert_openai_error(response_or_exception: object, status: int, code: str | None = None) -> dict:
    """One of seedtape's own errors: ``status``, JSON ``{"error": {"message", "type", "code"}}`` with
    type ``seedtape_error`` and ``code`` (any non-empty code when None), a readable message, and the
    headers that stop SDK retries (``x-should-retry: false``) and name the error (``seedtape-error``).

    Returns the ``error`` object.
    """
    got, headers, body = _parts(response_or_exception)
    assert got == status, (got, headers, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert headers.get("x-should-retry") == "false", headers
    doc = json.loads(body)
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err, dict) and {"message", "type", "code"} <= set(err) <= SEEDTAPE_ERROR_FIELDS, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert err["type"] == "seedtape_error", err
    assert isinstance(err["code"], str) and err["code"], err
    if code is not None:
        assert err["code"] == code, err
    assert headers.get("seedtape-error") == err["code"], headers
    return err
