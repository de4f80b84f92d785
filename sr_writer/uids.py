"""Deterministic UIDs (PS3.5 B.2: UUID-derived UIDs under the ``2.25`` root).

A retry of the same work must produce the same SOP Instance UIDs, so that a PACS sees the
same instance again (and answers "duplicate") instead of a second, different SR. Every UID
we mint is therefore a function of the inputs that identify the object, and of the
installation that made it: its UID root (a random UUID generated once, kept in the database's
``installation`` table) is the namespace of the name-based UUID, so two installations that
process the same study never mint the same UID for their different documents.
"""

from __future__ import annotations

import uuid

__all__ = ["derive_uid", "NAMESPACE"]

#: Namespace of name-based UUIDs that do not belong to one installation (the algorithm's
#: Device UID, sample studies) and the default root (fixed forever: changing it would give
#: every existing object a new identity on its next retry).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medrega-gateway:dicom-uid")


def derive_uid(*parts: str, root: uuid.UUID | str | None = None) -> str:
    """Return ``2.25.<decimal UUID>``, a UID that depends only on ``root`` and ``parts`` (in order).

    ``root`` is the installation's UID root (``gateway.models.Installation.uid_root``) for the
    objects an installation writes; ``None`` is :data:`NAMESPACE`. The parts are length-prefixed before hashing, so
    ``("ab", "c")`` and ``("a", "bc")`` differ. The UUID is name-based (RFC 9562 version 5),
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
