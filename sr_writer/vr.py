"""Fitting our text into the length limits of DICOM value representations (PS3.5 6.2).

The limits count characters, but validators (dciodvfy) count encoded bytes; we write
UTF-8 (ISO_IR 192), where a Chinese character takes three bytes. Fitting by bytes keeps
every validator content, and never cuts a character in half.
"""

from __future__ import annotations

__all__ = ["fit", "LO", "SH", "ST", "CS_LABEL"]

LO = 64
SH = 16
ST = 1024
CS_LABEL = 16

_ELLIPSIS = "..."


def fit(text: str, limit: int) -> str:
    """``text`` with blanks collapsed, shortened (ending in "...") to ``limit`` UTF-8 bytes."""
    text = " ".join(text.split())
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
