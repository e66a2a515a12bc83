"""``ConfigError`` and how keys and values are shown in its one line."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

Key = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(Exception):
    """A configuration file that cannot be used; ``str()`` is one line.

    ``path`` is the key as a tuple (``("limits", "recipients")``), so that the
    command-line options, which are laid over the document before it is
    checked, can tell which option an error is about."""

    def __init__(self, source: str, key: str | None, message: str, path: Key = ()) -> None:
        super().__init__(source, key, message)
        self.source = source
        self.key = key
        self.message = message
        self.path = path

    def __str__(self) -> str:
        text = f"{self.source}: {self.key}: {self.message}" if self.key else f"{self.source}: {self.message}"
        return re.sub(r"\s*[\r\n]+\s*", " ", text)  # one line, whatever a message carried


def format_key(key: Key) -> str:
    """``("routes", "example.org")`` -> ``routes."example.org"``; ints are array indices."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{text}" if out else text
    return out


def show_value(value: Any) -> str:
    """A value as TOML would spell it, short: how errors quote what they are about."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, list):
        return "an array"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:76] + '..."'


_show = show_value


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _got(value: Any) -> str:
    """What a value of the wrong type is: ``a string ("x")``, ``an array``."""
    if isinstance(value, dict | list):
        return _type_name(value)
    return f"{_type_name(value)} ({_show(value)})"


def _suggest(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.7)
    if not close:
        close = difflib.get_close_matches(word.lower().replace("-", "_"), sorted(choices), n=1, cutoff=0.7)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _why(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return " ".join(text.split())


def _ssl_why(e: Exception) -> str:
    """OpenSSL's reasons (``Error([('PEM routines', '', 'no start line')])``) or the exception's text."""
    errors = e.args[0] if e.args and isinstance(e.args[0], list) else None
    if errors and all(isinstance(x, tuple) and len(x) == 3 for x in errors):
        return "; ".join(dict.fromkeys(str(x[2]) for x in errors if x[2])) or type(e).__name__
    return _why(e)
