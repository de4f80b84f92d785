"""dciodvfy warnings we leave in place on purpose; each is explained in docs/sr-content.md.

A warning that matches none of these patterns fails the validation tests: fix it, or
explain it in the document and add it here.
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "sr-content.md"

#: (identifier used in docs/sr-content.md, pattern of the warning text)
EXPLAINED: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("W-LOCAL-SCHEME", re.compile(r"^Unrecognized defined term <99MEDREGA> for value 1 of attribute <Coding Scheme Designator>$")),
    ("W-DEVICE-UID", re.compile(r"^Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID$")),
    ("W-DEVICE-UID", re.compile(r"^Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class$")),
    ("W-SOURCE-COPY", re.compile(r"^Value dubious for this VR - \(0x(0010,0x0010|0008,0x1060)\) PN .* - Retired Person Name form$")),
    ("W-SOURCE-COPY", re.compile(r"^Value is zero for value 1 of attribute <Patient's (Weight|Size)>$")),
    ("W-SOURCE-COPY", re.compile(r"^Missing attribute or value that would be needed to build DICOMDIR - (Patient ID|Study ID|Study Date|Study Time)$")),
    ("W-PS-LATERALITY", re.compile(r"^is only permitted to be empty when actually unknown; should be absent \(not empty\) if an unpaired body part, and have a value if a paired body part - attribute <Laterality>$")),
)


def unexplained(warnings: list[str]) -> list[str]:
    """The warnings that no entry of :data:`EXPLAINED` covers."""
    return [w for w in warnings if not any(p.match(w) for _, p in EXPLAINED)]
