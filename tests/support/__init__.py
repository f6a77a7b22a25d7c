"""Helpers shared by the tests: import them as ``from support import ...`` (tests/ is on sys.path).

- ``entries``, ``get_entry``: what a store holds, read strictly (a broken store fails the test).
- ``http_request``, ``build_request``, ``request_bytes``, ``parse_response``, ``RawResponse``,
  ``ClosedEarly``: raw HTTP/1.1 over a socket, framed and parsed by h11.
- ``run_cli``: ``python -m seedtape ...`` in a child process.
- ``assert_openai_error``: a response is one of seedtape's own errors, in OpenAI's shape.
"""

from support.cli import run_cli
from support.errors import assert_openai_error
from support.rawhttp import ClosedEarly, RawResponse, build_request, http_request, parse_response, request_bytes
from support.store import entries, get_entry, plaintext

__all__ = [
    "ClosedEarly",
    "RawResponse",
    "assert_openai_error",
    "build_request",
    "entries",
    "get_entry",
    "http_request",
    "parse_response",
    "plaintext",
    "request_bytes",
    "run_cli",
]
