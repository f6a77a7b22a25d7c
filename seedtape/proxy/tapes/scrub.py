"""Scrubbing for exported tapes: headers and JSON fields that must not leave the machine.

Headers: the secret ones (``headers.is_secret``: the named ones and any name that mentions
auth, api-key, cookie, secret, password or session) are always dropped; more
names can be dropped on request. Stored headers are already allow-listed; this
is defence in depth for what goes into a repository.

Field paths (``--scrub-field``): ``request.<steps>`` addresses the canonical
request (its top-level fields are ``v``, ``method``, ``path``, ``query``,
``namespace`` and ``body``), ``response.<steps>`` the JSON response body and,
for a recorded stream, every JSON event (``data:`` line) in it. Steps are
separated by dots: an object key, an array index (``choices.0``) or ``*`` (every
key of an object, every item of an array). The value a path reaches becomes
``"[scrubbed]"``; a path that reaches nothing in an entry changes nothing there.
Examples: ``request.body.messages.*.content``, ``response.id``,
``response.choices.*.message.content``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass

from seedtape.proxy.headers import is_secret

SCRUBBED = "[scrubbed]"
WHERE = ("request", "response")


@dataclass(frozen=True)
class FieldPath:
    where: str  # "request" or "response"
    steps: tuple[str, ...]
    text: str

    def __str__(self) -> str:
        return self.text


def parse_field(text: str) -> FieldPath:
    """``request.body.user`` -> FieldPath; ValueError says what a path looks like."""
    where, _, rest = text.strip().partition(".")
    if where not in WHERE or not rest:
        raise ValueError(
            f"{text!r} is not a field path: start with request. or response., e.g. request.body.messages.*.content or response.id"
        )
    steps = tuple(rest.split("."))
    if "" in steps:
        raise ValueError(
            f"{text!r} has an empty step: steps are keys, array indexes or *, separated by single dots, "
            "e.g. request.body.messages.*.content"
        )
    return FieldPath(where, steps, text.strip())


def headers(pairs: Iterable[list[str]], drop: Iterable[str] = ()) -> tuple[list[list[str]], int]:
    """The headers without secrets and without ``drop`` (case-insensitive); and how many ``drop`` removed."""
    drop = {d.lower() for d in drop}
    out, dropped = [], 0
    for name, value in pairs:
        if is_secret(name):
            continue
        if name.lower() in drop:
            dropped += 1
            continue
        out.append([name, value])
    return out, dropped


def _apply(node: object, steps: tuple[str, ...]) -> int:
    head, rest = steps[0], steps[1:]
    if isinstance(node, dict):
        keys: list = list(node) if head == "*" else [head] if head in node else []
    elif isinstance(node, list):
        if head == "*":
            keys = list(range(len(node)))
        elif head.isascii() and head.isdigit() and int(head) < len(node):
            keys = [int(head)]
        else:
            keys = []
    else:
        return 0
    count = 0
    for k in keys:
        if rest:
            count += _apply(node[k], rest)
        else:
            node[k] = SCRUBBED
            count += 1
    return count


def value(doc: object, paths: Iterable[FieldPath]) -> tuple[object, int]:
    """A scrubbed deep copy of a parsed JSON document, and how many values were replaced."""
    paths = list(paths)
    if not paths:
        return doc, 0
    doc = copy.deepcopy(doc)
    return doc, sum(_apply(doc, p.steps) for p in paths)


def request(req: dict, fields: Iterable[FieldPath]) -> tuple[dict, int]:
    return value(req, [f for f in fields if f.where == "request"])  # type: ignore[return-value]


def _dumps(doc: object, indent: int | None) -> bytes:
    seps = (",", ": ") if indent else (",", ":")
    try:
        return json.dumps(doc, ensure_ascii=False, indent=indent, separators=seps).encode()
    except UnicodeEncodeError:  # lone surrogates: keep them as JSON escapes
        return json.dumps(doc, indent=indent, separators=seps).encode()


def body(data: bytes, fmt: str, fields: Iterable[FieldPath]) -> tuple[bytes, int]:
    """The response body with ``response.`` paths scrubbed, and how many values were replaced.

    A JSON body that changed is re-serialized (indented by 2 if it was on several
    lines, compact otherwise); in a stream only the ``data:`` lines that changed are
    rewritten (``data: `` + compact JSON), every other byte stays as recorded.
    """
    paths = [f for f in fields if f.where == "response"]
    if not paths:
        return data, 0
    if fmt == "sse":
        return _sse(data, paths)
    try:
        doc = json.loads(data.decode("utf-8"))
    except ValueError:
        return data, 0
    doc, n = value(doc, paths)
    return (_dumps(doc, 2 if b"\n" in data.strip() else None) if n else data), n


def _sse(data: bytes, paths: list[FieldPath]) -> tuple[bytes, int]:
    out, total = [], 0
    for line in data.splitlines(keepends=True):
        text = line.rstrip(b"\r\n")
        end = line[len(text) :]
        if text.startswith(b"data:"):
            payload = text[5:].removeprefix(b" ")
            try:
                doc = json.loads(payload.decode("utf-8"))
            except ValueError:
                doc = None
            if isinstance(doc, (dict, list)):
                doc, n = value(doc, paths)
                if n:
                    total += n
                    line = b"data: " + _dumps(doc, None) + end
        out.append(line)
    return b"".join(out), total
