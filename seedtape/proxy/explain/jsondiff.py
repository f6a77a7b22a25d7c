"""One JSON diff engine: field-level differences as JSON paths, shortened for people.

Used to explain replay misses (which field of a request changed), by
`seedtape diff`, and by the drift audit (where a live answer first departs
from its recording).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

ABSENT = object()  # a field one side does not have
_CHOICE = re.compile(r"^\[(\d+)\]\.?(.*)$")
_PLAIN = re.compile(r"^[\w.:/@+-]{1,40}$")
_TOKEN = re.compile(r"\w+|[^\w\s]|\s+", re.UNICODE)


@dataclass(frozen=True)
class Change:
    path: str  # e.g. messages[2].content
    a: object  # ABSENT when only b has it
    b: object  # ABSENT when only a has it

    def to_json(self) -> dict:
        out: dict = {"path": self.path}
        if self.a is not ABSENT:
            out["a"] = self.a
        if self.b is not ABSENT:
            out["b"] = self.b
        return out

    def __str__(self) -> str:
        a, b = shorten_pair(self.a, self.b)
        if isinstance(self.a, str) != isinstance(self.b, str):  # "0.7" vs 0.7: show that one is a string
            a, b = (
                json.dumps(v, ensure_ascii=False) if isinstance(v, str) and not t.startswith('"') else t
                for v, t in ((self.a, a), (self.b, b))
            )
        return f"{self.path or '(whole)'}: {a} != {b}"


def _join(path: str, step: str | int) -> str:
    if isinstance(step, int):
        return f"{path}[{step}]"
    if not re.fullmatch(r"[A-Za-z_][\w-]*", step):
        step = json.dumps(step, ensure_ascii=False)
        return f"{path}[{step}]"
    return f"{path}.{step}" if path else step


def diff(a: object, b: object, path: str = "") -> list[Change]:
    """Every leaf where ``a`` and ``b`` differ, in document order (objects by sorted key)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[Change] = []
        for k in sorted(set(a) | set(b), key=str):
            out += diff(a.get(k, ABSENT), b.get(k, ABSENT), _join(path, k))
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i in range(max(len(a), len(b))):
            out += diff(a[i] if i < len(a) else ABSENT, b[i] if i < len(b) else ABSENT, _join(path, i))
        return out
    if a is ABSENT and b is ABSENT:
        return []
    if type(a) is type(b) and a == b:
        return []
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    ):
        return []
    return [Change(path, a, b)]


def _show(v: object, text: str | None = None) -> str:
    if v is ABSENT:
        return "(absent)"
    if isinstance(v, str):
        t = v if text is None else text
        return t if text is None and _PLAIN.match(v) else json.dumps(t, ensure_ascii=False)
    s = json.dumps(v, ensure_ascii=False, sort_keys=True)
    return s if len(s) <= 60 else s[:57] + "…"


def shorten_pair(a: object, b: object, width: int = 24) -> tuple[str, str]:
    """Both values for display; two long strings lose their common prefix and suffix to an ellipsis."""
    if not (isinstance(a, str) and isinstance(b, str)) or (len(a) <= width and len(b) <= width):
        return _show(a), _show(b)
    pre = 0
    while pre < min(len(a), len(b)) and a[pre] == b[pre]:
        pre += 1
    if pre < min(len(a), len(b)):  # back up to the start of the word, unless it is very long
        start = a.rfind(" ", 0, pre) + 1
        pre = start if pre - start <= 12 else pre - 6
    suf = 0
    while suf < min(len(a), len(b)) - pre and a[-1 - suf] == b[-1 - suf]:
        suf += 1
    if suf and suf < min(len(a), len(b)) - pre:
        end = a.find(" ", len(a) - suf)
        suf = len(a) - end if end != -1 and end - (len(a) - suf) <= 12 else max(0, suf - 6)
    if min(len(a), len(b)) - pre - suf <= 0:  # an insertion: keep the same context on both sides
        if pre:
            start = a.rfind(" ", 0, pre - 1) + 1
            pre = start if pre - start <= 12 else pre - 8
        else:
            suf = max(0, suf - 8)

    def cut(s: str) -> str:
        mid = s[pre : len(s) - suf]
        head = "…" if pre else ""
        tail = "…" if suf else ""
        if len(mid) > width:
            mid = mid[:width] + "…"
            tail = ""
        return head + mid + tail

    return _show(a, cut(a)), _show(b, cut(b))


def first_departure(a: object, b: object) -> dict | None:
    """Where ``b`` first departs from ``a``: the path and, for text, the token and character offset."""
    changes = diff(a, b)
    if not changes:
        return None
    c = changes[0]
    out: dict = {"path": c.path, "summary": str(c)}
    if m := _CHOICE.match(c.path):  # outputs are lists of choices: name which one, and its field
        out["choice"], out["field"] = int(m.group(1)), m.group(2)
    if isinstance(c.a, str) and isinstance(c.b, str):
        ta, tb = _TOKEN.findall(c.a), _TOKEN.findall(c.b)
        i = next((n for n, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        out["token"] = i
        out["char"] = sum(len(t) for t in ta[:i])
        out["recorded_token"] = ta[i] if i < len(ta) else None
        out["live_token"] = tb[i] if i < len(tb) else None
    return out
