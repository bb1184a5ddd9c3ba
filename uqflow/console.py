"""Text from data made inert before it reaches a terminal: what a dataset, a registry file, a
results store or a query's result holds is shown, never obeyed.

A terminal acts on some characters instead of showing them: ESC starts an escape sequence (colours,
cursor moves, a window title, a hidden OSC 8 hyperlink), CR and BS overwrite what came before,
U+009B is a one-character CSI, and the bidirectional controls reorder the text after them (a
right-to-left override makes "txt.exe" read "exe.txt"). rich adds its own layer: a string it prints
is console markup, so ``[red]x[/red]`` loses its tags, ``[link=...]`` hides a hyperlink and a stray
``[/bold]`` raises an error. :func:`inert` shows each such character as its escape (``\\x1b``,
``\\u202e``); :class:`DataTable` puts every title, header and cell through it as a ``rich.text.Text``,
which rich never reads as markup or emoji codes.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

#: C0 controls but tab and newline (a cell or message may span lines), DEL, and C1 controls
_CONTROLS = [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]
#: Unicode's bidirectional controls: the embeddings and overrides (U+202A-202E), the isolates
#: (U+2066-2069), the left-to-right and right-to-left marks (U+200E/F) and the Arabic letter mark (U+061C)
BIDI_CONTROLS = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {**{c: f"\\x{c:02x}" for c in _CONTROLS}, **{c: f"\\u{c:04x}" for c in BIDI_CONTROLS}, 0x0D: "\\r"}
_ONE_LINE = {**_ESCAPES, 0x0A: "\\n", 0x09: "\\t"}


def inert(value, *, one_line: bool = False) -> str:
    """``str(value)`` with every control and bidirectional control character shown as its escape
    (ESC as ``\\x1b``, U+202E as ``\\u202e``); tab and newline are kept unless ``one_line``."""
    return str(value).translate(_ONE_LINE if one_line else _ESCAPES)


def _text(value):
    return Text(inert(value)) if isinstance(value, str) else value


class DataTable(Table):
    """A ``rich.table.Table`` for values from data: its title, caption, headers and string cells are
    shown as they are (:func:`inert`, never console markup)."""

    def __init__(self, *headers, title=None, caption=None, **kwargs):
        super().__init__(*headers, title=_text(title), caption=_text(caption), **kwargs)

    def add_column(self, header="", *args, **kwargs) -> None:
        super().add_column(_text(header), *args, **kwargs)

    def add_row(self, *renderables, **kwargs) -> None:
        super().add_row(*map(_text, renderables), **kwargs)


#: the same characters as JSON's ``\uXXXX`` escapes, which a JSON reader turns back into them
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (*_CONTROLS, *BIDI_CONTROLS)}


def inert_json(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with the characters :func:`inert` escapes
    written as ``\\uXXXX``: the same data to a JSON reader, nothing a terminal acts on (``json``
    itself escapes only the C0 controls). Such characters can occur only inside a JSON string,
    where any character may be written so."""
    return text.translate(_JSON_ESCAPES)
