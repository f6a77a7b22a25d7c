"""Opt-in key rules for volatile values: ``--ignore-path PATH`` and ``--mask REGEX``.

A tool call id or a timestamp in a tool's output changes from run to run without
changing what a request asks; these rules keep such values out of the request key.
Both act on the JSON body only, after the top-level ignore list, and never on what
is forwarded: the upstream gets the request as the client sent it.

Paths (``--ignore-path``) address the body with the steps of ``--redact-field``:
steps separated by dots, each an object key, an array index (``messages.0``) or ``*``
(every key of an object, every item of an array); the body is where a path starts,
so no ``request.body.`` prefix. The bracket spelling that explained misses print is
accepted too: ``messages[*].tool_call_id`` is ``messages.*.tool_call_id``,
``tools[0]`` is ``tools.0`` and ``["a.b"]`` is the key ``a.b``. What a path reaches is
removed (an object key, or an array item); a path that reaches nothing changes nothing.

Masks (``--mask``) are Python regular expressions (``re`` syntax). Every match in every
string value of the body (at any depth, also inside a string that holds JSON, such as
a tool message's ``content``) becomes ``<masked>``; masks apply in the order given.
A pattern that matches the empty string is refused: it would mask between every two
characters. With the ``regex`` module installed, a mask that runs longer than
MASK_TIMEOUT seconds on one string raises MaskTimeout instead of holding the proxy.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

try:  # only for its timeout: patterns are compiled with re first, so the syntax is re's wherever seedtape runs
    import regex as _regex
except ImportError:  # pragma: no cover - depends on the environment
    _regex = None

MASKED = "<masked>"
MASK_TIMEOUT = 5.0  # seconds for one mask on one string (with the regex module)
STAR = "*"

_NAME = re.compile(r"[^.\[\]]+")
_BRACKET = re.compile(r"\[(\*|\d+|\"(?:[^\"\\]|\\.)*\")\]")
_PATH_HELP = (
    "steps are keys, array indexes or *, separated by dots (e.g. messages.*.tool_call_id), "
    'or in brackets (messages[*].tool_call_id, ["a.b"])'
)


@dataclass(frozen=True)
class IgnorePath:
    """A parsed ``--ignore-path``: steps as in --redact-field (``*`` for every key or item)."""

    steps: tuple[str, ...]
    text: str  # as given, for messages

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Mask:
    """A compiled ``--mask``; equal when the pattern text is."""

    text: str
    pattern: Any = field(compare=False, repr=False)  # re.Pattern, or regex.Pattern when regex is installed

    def __str__(self) -> str:
        return self.text

    def sub(self, s: str) -> tuple[str, int]:
        """``s`` with every non-empty match replaced by MASKED, and how many there were."""
        count = 0

        def repl(m: Any) -> str:
            nonlocal count
            if not m.group():  # a zero-width match (\b, a lookahead): nothing to mask
                return ""
            count += 1
            return MASKED

        if _regex is not None and not isinstance(self.pattern, re.Pattern):
            try:
                out = self.pattern.sub(repl, s, timeout=MASK_TIMEOUT)
            except TimeoutError:
                raise MaskTimeout(
                    f"--mask {self.text!r} ran longer than {MASK_TIMEOUT:g} s on one string of this request "
                    "(a pattern that backtracks a lot?)"
                ) from None
        else:
            out = self.pattern.sub(repl, s)
        return out, count


class MaskTimeout(ValueError):
    """A --mask took too long on one string: the request cannot be keyed."""


@dataclass(frozen=True)
class RuleUse:
    """One rule that changed a request's body: the option, its value, how many fields or matches."""

    option: str  # "--ignore-path" or "--mask"
    value: str
    count: int

    def __str__(self) -> str:
        what = ("field", "fields") if self.option == "--ignore-path" else ("match", "matches")
        return f"{self.option} {shell_quote(self.value)} ({self.count} {what[self.count != 1]})"

    def to_json(self) -> dict:
        return {"option": self.option, "value": self.value, "count": self.count}


def shell_quote(text: str) -> str:
    """``text`` as one shell word, quoted only when it needs to be (paths have * and [ ], masks \\ and more)."""
    return shlex.quote(text)


def parse_path(text: str) -> IgnorePath:
    """``messages.*.tool_call_id`` or ``messages[*].tool_call_id`` -> IgnorePath; ValueError says what a path looks like."""
    src = text.strip()
    if not src:
        raise ValueError(f"{text!r} is not a body path: {_PATH_HELP}")
    steps: list[str] = []
    pos, after_step = 0, False
    while pos < len(src):
        if src[pos] == "[":
            m = _BRACKET.match(src, pos)
            if not m:
                raise ValueError(f'{text!r} has a bad bracket at character {pos + 1}: use [*], [N] or ["key"]; {_PATH_HELP}')
            inner = m.group(1)
            steps.append(json.loads(inner) if inner.startswith('"') else inner)
            pos, after_step = m.end(), True
            continue
        if after_step:
            if src[pos] != ".":
                raise ValueError(f"{text!r} has {src[pos]!r} after a step at character {pos + 1}: {_PATH_HELP}")
            pos += 1
            if pos < len(src) and src[pos] == "[":
                raise ValueError(f"{text!r} has an empty step at character {pos}: {_PATH_HELP}")
        m = _NAME.match(src, pos)
        if not m:
            raise ValueError(f"{text!r} has an empty step at character {pos + 1}: {_PATH_HELP}")
        steps.append(m.group())
        pos, after_step = m.end(), True
    return IgnorePath(tuple(steps), src)


def compile_mask(text: str) -> Mask:
    """A Mask; ValueError says why the pattern cannot be one."""
    try:
        checked = re.compile(text)
    except re.error as e:
        raise ValueError(f"{text!r} is not a regular expression: {e}") from None
    if checked.search(""):
        raise ValueError(f"{text!r} matches the empty string, so it would mask between every two characters")
    pattern: Any = checked
    if _regex is not None:
        try:
            pattern = _regex.compile(text)
        except _regex.error:  # pragma: no cover - re accepted it; keep re, without the timeout
            pattern = checked
    return Mask(text, pattern)


def _remove(node: object, steps: tuple[str, ...]) -> int:
    head, rest = steps[0], steps[1:]
    if isinstance(node, dict):
        keys: list = list(node) if head == STAR else [head] if head in node else []
    elif isinstance(node, list):
        if head == STAR:
            keys = list(range(len(node)))
        elif head.isascii() and head.isdigit() and int(head) < len(node):
            keys = [int(head)]
        else:
            keys = []
    else:
        return 0
    if rest:
        return sum(_remove(node[k], rest) for k in keys)
    for k in reversed(keys):  # from the end, so list indexes stay valid
        del node[k]
    return len(keys)


def _mask_strings(node: object, masks: Sequence[Mask], counts: list[int]) -> object:
    if isinstance(node, str):
        for i, m in enumerate(masks):
            node, n = m.sub(node)
            counts[i] += n
        return node
    if isinstance(node, dict):
        for k, v in node.items():
            node[k] = _mask_strings(v, masks, counts)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            node[i] = _mask_strings(v, masks, counts)
    return node


def apply_in_place(body: object, paths: Sequence[IgnorePath], masks: Sequence[Mask]) -> tuple[object, tuple[RuleUse, ...]]:
    """Apply the rules to ``body``, changing it (pass a copy); the body, and the rules that changed something."""
    used: list[RuleUse] = []
    for p in paths:
        n = _remove(body, p.steps)
        if n:
            used.append(RuleUse("--ignore-path", p.text, n))
    if masks:
        counts = [0] * len(masks)
        body = _mask_strings(body, masks, counts)
        used += [RuleUse("--mask", m.text, n) for m, n in zip(masks, counts) if n]
    return body, tuple(used)
