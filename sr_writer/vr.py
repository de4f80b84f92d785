"""Fitting our text into the length limits of DICOM value representations (PS3.5 6.2).

The limits count characters, but validators (dciodvfy) count encoded bytes; we write
UTF-8 (ISO_IR 192), where a Chinese character takes three bytes. Fitting by bytes keeps
every validator content, and never cuts a character in half.
"""

from __future__ import annotations

import re

__all__ = ["fit", "clean_text", "LO", "SH", "ST", "CS_LABEL"]

LO = 64
SH = 16
ST = 1024
CS_LABEL = 16

_ELLIPSIS = "..."


# C0 controls other than TAB, LF, FF, CR; ESC too (no ISO 2022 code extensions with ISO_IR 192);
# DEL and the C1 controls; lone surrogates (not encodable in UTF-8).
_DISALLOWED = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with the characters no text VR allows (PS3.5 6.1.2/6.1.3) replaced by U+FFFD.

    Model output is arbitrary: a random or misbehaving model can emit control characters (the
    byte-level tokens of a tiny test model decode to them), which would make the SR invalid.
    """
    return _DISALLOWED.sub("\ufffd", text)


def fit(text: str, limit: int) -> str:
    """``text`` cleaned, blanks collapsed, shortened (ending in "...") to ``limit`` UTF-8 bytes."""
    text = " ".join(clean_text(text).split())
    if len(text.encode("utf-8")) <= limit:
        return text
    budget = limit - len(_ELLIPSIS)
    out: list[str] = []
    used = 0
    for char in text:
        size = len(char.encode("utf-8"))
        if used + size > budget:
            break
        out.append(char)
        used += size
    return "".join(out).rstrip() + _ELLIPSIS
