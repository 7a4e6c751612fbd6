"""TOML source text: parse it, find the line of a table or key, suggest the key that was meant.

The configuration and the model manifests both report every problem with ``file:line`` and a
"did you mean"; this is the one home for those three things. Pure: it reads no file.

* :func:`loads` / :class:`TOMLDecodeError` / :func:`error_line`: ``tomllib`` (``tomli`` before 3.11).
* :class:`Lines`: every header and key of a text indexed in one pass, so a manifest of a thousand
  models asks for a thousand lines in linear time; :func:`line_of` is the one-off question.
* :func:`did_you_mean`: ``"; did you mean 'x'?"`` or ``""``.
* :func:`value`: a value as TOML source, for the files syncbridge writes.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any, Iterable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["loads", "TOMLDecodeError", "error_line", "Lines", "line_of", "did_you_mean", "value"]

TOMLDecodeError = tomllib.TOMLDecodeError

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
# The first key of a line (``key =``, ``"key" =``, or the head of a dotted ``key.sub =``).
_KEY_RE = re.compile(r"""^\s*(?:"([^"\n]*)"|'([^'\n]*)'|([A-Za-z0-9_-]+))\s*[=.]""")
# ``table.key =`` (above every table: a dotted key naming a table's key).
_DOTTED_RE = re.compile(r"""^\s*([A-Za-z0-9_-]+)\s*\.\s*(?:"([^"\n]*)"|'([^'\n]*)'|([A-Za-z0-9_-]+))\s*=""")


def loads(text: str) -> dict[str, Any]:
    """Parse TOML text (raises :class:`TOMLDecodeError`)."""
    return tomllib.loads(text)


def error_line(exc: BaseException) -> int | None:
    """The line a :class:`TOMLDecodeError` points at, when its message says."""
    found = re.search(r"line (\d+)", str(exc))
    return int(found.group(1)) if found else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib, cutoff 0.6), else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Lines:
    """Line numbers (1-based) of the tables and keys of a TOML text, indexed in one pass.

    A table's name is its header with quotes and spaces removed (``[ "remote" ]`` is ``remote``);
    ``[[name]]`` headers are counted per name, so ``index`` picks one table of an array.
    """

    def __init__(self, text: str) -> None:
        self._header: dict[str, int] = {}  # name -> first header of that name
        self._array: dict[tuple[str, int], int] = {}  # (name, n) -> header of the n-th [[name]]
        self._prefix: dict[str, int] = {}  # "a" and "a.b" of a header [a.b.c] -> first such header
        self._key: dict[tuple[str | None, str], int] = {}  # (table or None, key) -> first line, any table of that name
        self._key_at: dict[tuple[str, int, str], int] = {}  # (table, n, key) -> first line in the n-th [[table]]
        self._dotted: dict[tuple[str, str], int] = {}  # `table.key =` above every table
        current: str | None = None
        seen: dict[str, int] = {}  # [[name]] headers so far, per name
        for number, line in enumerate(text.splitlines(), 1):
            header = _HEADER_RE.match(line)
            if header:
                current = header.group(2).replace('"', "").replace("'", "").replace(" ", "")
                if header.group(1) == "[[":
                    seen[current] = seen.get(current, 0) + 1
                    self._array.setdefault((current, seen[current] - 1), number)
                self._header.setdefault(current, number)
                parts = current.split(".")
                for i in range(1, len(parts)):
                    self._prefix.setdefault(".".join(parts[:i]), number)
                continue
            match = _KEY_RE.match(line)
            if match is None:
                continue
            key = next(g for g in match.groups() if g is not None)
            self._key.setdefault((current, key), number)
            if current is not None:
                self._key_at.setdefault((current, seen.get(current, 0) - 1, key), number)
            else:
                dotted = _DOTTED_RE.match(line)
                if dotted:
                    sub = next(g for g in dotted.groups()[1:] if g is not None)
                    self._dotted.setdefault((dotted.group(1), sub), number)

    def of(self, section: str | None, key: str | None = None, *, index: int | None = None) -> int | None:
        """The line of ``key`` in table ``section`` (``None``: the top level), or of the table's header
        when ``key`` is ``None``; ``index`` picks the n-th ``[[section]]`` (0-based).

        A key that is itself a table (``[remote.extra]``) is found by its header, and ``remote.key = ...``
        above every table counts as ``key`` of ``remote``. ``None`` when the text does not say.
        """
        if key is None:
            if section is None:
                return None
            return self._header.get(section) if index is None else self._array.get((section, index))
        found: list[int | None] = []
        if section is None:
            found += [self._key.get((None, key)), self._prefix.get(key)]
            if index is None:
                found.append(self._header.get(key))
        elif index is None:
            found += [self._key.get((section, key)), self._header.get(f"{section}.{key}"),
                      self._dotted.get((section, key))]
        else:
            found.append(self._key_at.get((section, index, key)))
        lines = [n for n in found if n is not None]
        return min(lines) if lines else None


def line_of(text: str, section: str | None, key: str | None, *, index: int | None = None) -> int | None:
    """Best-effort line number of a table or key in a TOML text (see :meth:`Lines.of`)."""
    return Lines(text).of(section, key, index=index)


def value(item: Any) -> str:
    """``item`` (a string, a whole number, a boolean, or a table of those) as TOML source, for files
    syncbridge writes (generated manifests, profiles): a JSON string is a valid TOML basic string."""
    import json

    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in item.items()) + " }"
    return json.dumps(str(item), ensure_ascii=False)
