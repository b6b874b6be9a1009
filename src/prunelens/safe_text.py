"""Text from a store, a plan or a plugin, made safe to show: no terminal escapes, no Rich markup.

A store is data anyone can hand you. Its strings (model id, method labels, unit names, attrs)
and a plugin's messages must reach the terminal as the characters they are: terminal escape
sequences (``ESC]0;title``, ``ESC[2J``) and other control characters are removed, and Rich
markup (``[red]``, ``[/]``, ``runs/[exp1]/model``) is escaped so that it prints literally.
The same strings in a Markdown report go through ``md``/``md_code``, and in a YAML export's
comments through ``yaml_scalar`` (a one-line quoted scalar: no line break, tag or key can escape it).
"""

from __future__ import annotations

import json
import re
from typing import Any

# ESC-initiated sequences: CSI (ESC [ ... final), OSC/DCS/PM/APC/SOS (ESC ] ... BEL or ESC \), two-byte ESC x;
# then the 8-bit C1 forms of CSI and OSC
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
    r"|[\x90\x9d\x98\x9e\x9f][^\x07\x1b\x9c]*(?:\x07|\x9c)?"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NEWLINES = re.compile(r"[\t\n\u2028\u2029]+")  # with the Unicode line and paragraph separators


def clean(text: Any, *, oneline: bool = True) -> str:
    """``text`` as a string without escape sequences or control characters (tabs/newlines -> one space)."""
    s = _ESCAPES.sub("", str(text))
    s = _CONTROL.sub("", s)
    return _NEWLINES.sub(" ", s) if oneline else s


def esc(text: Any, *, oneline: bool = True) -> str:
    """``clean(text)`` with Rich markup escaped: for ``console.print``, table cells and Textual labels."""
    from rich.markup import escape

    return escape(clean(text, oneline=oneline))


def md(text: Any) -> str:
    """``clean(text)`` for a Markdown table cell or line: ``|`` and backticks cannot break the layout."""
    return clean(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")


def md_code(text: Any) -> str:
    """``clean(text)`` inside an inline code span (backticks replaced so the span cannot end early)."""
    return "`" + clean(text).replace("`", "'").replace("|", "\\|") + "`"


_YAML_PLAIN = re.compile(r"[ -~]*")  # printable ASCII: literal inside a single-quoted scalar


def yaml_scalar(text: Any) -> str:
    """``text`` as a one-line quoted YAML scalar that ``yaml.safe_load`` reads back as ``str(text)``.

    Printable ASCII is single-quoted (``'`` doubled); anything else is double-quoted with JSON's
    escapes (``\\n``, ``\\u2028``...), which YAML reads too. Either way the result holds no line break,
    so in a comment (``# model: ...``) it cannot start a YAML line, key or tag.
    """
    s = str(text)
    if _YAML_PLAIN.fullmatch(s):
        return "'" + s.replace("'", "''") + "'"
    return json.dumps(s, ensure_ascii=True)
