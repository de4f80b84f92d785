"""Unique Identifiers (PS3.5 9.1): the one strict validator, and the node's own identity.

A UID is a string of numeric components separated by dots, each component without a leading
zero (unless it is the single digit ``0``), at most 64 characters in all, and nothing else: no
padding, no whitespace, no control character (PS3.5 9.1). Padding (a trailing NUL, PS3.5 6.2)
belongs to the encoding of a UI value, not to the UID: the reader removes exactly that one pad
byte before validating (:func:`ui_value_text`), never whitespace. Command set UIDs (PS3.7) and
data set UIDs (PS3.3) are checked by this one validator.

``re.fullmatch`` is used on purpose: ``$`` also matches before a final line feed, which let
``"1.2.3\\n"`` through the earlier pattern (issue 13, case 5).

Derived UIDs (PS3.5 B.2): the gateway's own objects get name-based UIDs, so that a retry of the
same work produces the same SOP Instance UIDs (a PACS sees the same instance again and answers
"duplicate" instead of keeping a second, different SR). Every UID we mint is a function of the
inputs that identify the object and of the installation that made it: its UID root (a random
UUID generated once, kept in the database's ``installation`` table) is the namespace of the
name-based UUID, so two installations that process the same study never mint the same UID.
"""

from __future__ import annotations

import re
import uuid
from importlib.metadata import PackageNotFoundError, version

__all__ = [
    "UID_MAXIMUM_LENGTH",
    "UID_PATTERN",
    "InvalidUIDError",
    "valid_uid",
    "ui_value_text",
    "PROJECT_UID_ROOT",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "NAMESPACE",
    "derive_uid",
]

#: PS3.5 9.1: "shall not exceed 64 total characters"
UID_MAXIMUM_LENGTH = 64
#: The UID grammar without anchors (for ``re.fullmatch`` here, and anchored by ``^...$`` in the API's
#: OpenAPI schema, whose regex dialect has no ``\\Z``).
UID_PATTERN = r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*"
_UID = re.compile(UID_PATTERN, re.ASCII)


class InvalidUIDError(ValueError):
    """A value that is not a PS3.5 9.1 UID."""


def valid_uid(value: str | None) -> bool:
    """True when ``value`` is exactly a UID (PS3.5 9.1): digits and dots, components without
    leading zeros, 1 to 64 characters, nothing before or after."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= UID_MAXIMUM_LENGTH
        and _UID.fullmatch(value) is not None
    )


def _package_version() -> str:
    try:
        return version("medrega-gateway")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0"


def ui_value_text(raw: bytes) -> str:
    """An encoded UI value as text, less its one trailing NUL pad byte (PS3.5 6.2) and nothing
    else: a space, a line feed, a second NUL or a byte outside ASCII stay (latin-1 keeps every
    byte and never fails), so that :func:`valid_uid` refuses them."""
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    return raw.decode("latin-1")


#: The project's own UID root (PS3.5 B.2: ``2.25`` followed by the decimal form of a UUID, here
#: one random version 4 UUID drawn once for medrega-gateway; no registration needed). Arcs under
#: it: ``.1`` the Implementation Class UID. Fixed forever.
PROJECT_UID_ROOT = "2.25.337355915739028579092589138999609460225"
#: The node's Implementation Class UID (PS3.7 D.3.3.2, PS3.10 7.1 (0002,0012)): sent in every
#: A-ASSOCIATE-AC and written in the File Meta Information of every received instance.
IMPLEMENTATION_CLASS_UID = f"{PROJECT_UID_ROOT}.1"
#: Implementation Version Name (PS3.7 D.3.3.2, (0002,0013); SH, 1 to 16 characters):
#: ``MEDREGA_`` and the package version.
IMPLEMENTATION_VERSION_NAME = "MEDREGA_" + _package_version()


#: Namespace of name-based UUIDs that do not belong to one installation (the algorithm's
#: Device UID, sample studies) and the default root (fixed forever: changing it would give
#: every existing object a new identity on its next retry).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medrega-gateway:dicom-uid")


def derive_uid(*parts: str, root: uuid.UUID | str | None = None) -> str:
    """Return ``2.25.<decimal UUID>``, a UID that depends only on ``root`` and ``parts`` (in order).

    ``root`` is the installation's UID root (``Installation.uid_root`` in the database) for the
    objects an installation writes; ``None`` is :data:`NAMESPACE`. The parts are length-prefixed
    before hashing, so ``("ab", "c")`` and ``("a", "bc")`` differ. The UUID is name-based (RFC 9562 version 5),
    at most 44 characters as a UID.

    >>> derive_uid("1.2.3", "1", "en", "sr") == derive_uid("1.2.3", "1", "en", "sr")
    True
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"derive_uid parts must be str, not {type(part).__name__}")
    namespace = NAMESPACE if root is None else root if isinstance(root, uuid.UUID) else uuid.UUID(root)
    name = "".join(f"{len(part)}:{part};" for part in parts)
    return f"2.25.{uuid.uuid5(namespace, name).int}"
