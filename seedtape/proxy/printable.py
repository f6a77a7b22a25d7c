"""Text from recorded or received data, made safe to print on a terminal or in a log.

Tapes and upstream answers are untrusted: a ``model``, ``system_fingerprint``,
namespace, path or body can carry terminal control sequences (``ESC ] 0;`` sets
the window title, ``ESC [2J`` clears the screen, a C1 ``CSI`` does the same
without ESC), carriage returns that overwrite a log line, newlines that forge
one, and lone surrogates that no terminal encoding can write. Every line seedtape
prints from such data passes through :func:`escape`.
"""

from __future__ import annotations

import logging
import re

# C0 controls, DEL, C1 controls, lone surrogates, and the bidi/zero-width format characters
# that reorder or hide text on a terminal (Trojan-source style).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_UNSAFE_KEEP_NEWLINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _code(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def escape(text: str, *, newlines: bool = False) -> str:
    """``text`` with every control, format and surrogate character written as a backslash escape.

    With ``newlines=True`` line feeds stay (for multi-line output such as pretty JSON);
    a carriage return is escaped either way, so no line can overwrite another.
    """
    return (_UNSAFE_KEEP_NEWLINES if newlines else _UNSAFE).sub(_code, text)


class LogEscaper(logging.Filter):
    """Escapes every record of a logger: paths, fingerprints and notes come from clients and upstreams.

    Installed on seedtape's logger, it renders the message once and escapes it (and the
    traceback), so no log line carries raw ESC, CR, LF or a lone surrogate, which a
    terminal would act on or an encoder would refuse. Escaping twice changes nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = escape(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = escape(logging.Formatter().formatException(record.exc_info), newlines=True)
        return True


def escape_json(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with the same characters as ``\\uXXXX`` escapes.

    Stays valid JSON: such characters can only stand inside strings, where the escape means the same.
    """
    return _UNSAFE_KEEP_NEWLINES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
