"""Validate DICOM files with dicom3tools' ``dciodvfy`` (IOD, module, attribute and VR checks).

Usage from any test::

    from tests.peers.dciodvfy import available, validate

    errors, warnings = validate(path)
    assert errors == [], errors

``dciodvfy`` cannot read deflated (or otherwise compressed) files, so :func:`validate`
always checks an Explicit VR Little Endian copy made by DCMTK's ``dcmconv +te``. The
returned messages are dciodvfy's lines without the ``Error - ``/``Warning - `` prefix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["DciodvfyUnavailable", "ValidationRunError", "available", "validate", "TOOLS"]

#: The executables this module needs (Debian packages dicom3tools and dcmtk).
TOOLS = ("dciodvfy", "dcmconv")

_TIMEOUT_S = 60


class DciodvfyUnavailable(RuntimeError):
    """dciodvfy or dcmconv is not installed (``make setup`` installs both)."""


class ValidationRunError(RuntimeError):
    """A tool ran but failed in a way that yields no verdict (conversion failed, timeout)."""


def available() -> bool:
    """Whether both dciodvfy and dcmconv are on PATH."""
    return all(shutil.which(tool) for tool in TOOLS)


def _dcmtk_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # DCMTK reads it at start-up; set for every DCMTK call here
    return env


def _explicit_little_endian_copy(path: Path, folder: Path) -> Path:
    target = folder / "explicit-le.dcm"
    result = subprocess.run(
        ["dcmconv", "+te", str(path), str(target)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        env=_dcmtk_env(),
    )
    if result.returncode != 0 or not target.exists():
        raise ValidationRunError(f"dcmconv +te {path} failed ({result.returncode}): {result.stderr.strip()}")
    return target


def validate(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Run dciodvfy on an Explicit VR Little Endian copy of ``path``.

    Returns ``(errors, warnings)``: the messages of dciodvfy's ``Error - ...`` and
    ``Warning - ...`` lines, in output order, prefixes removed.
    Raises :class:`DciodvfyUnavailable` if the tools are missing and
    :class:`ValidationRunError` if conversion fails or dciodvfy hangs.
    """
    if not available():
        raise DciodvfyUnavailable(f"need {', '.join(TOOLS)} on PATH (dicom3tools and dcmtk)")
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(source)
    with tempfile.TemporaryDirectory(prefix="dciodvfy-") as folder:
        copy = _explicit_little_endian_copy(source, Path(folder))
        try:
            result = subprocess.run(
                ["dciodvfy", str(copy)], capture_output=True, text=True, errors="replace", timeout=_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise ValidationRunError(f"dciodvfy timed out on {source}") from exc
    errors: list[str] = []
    warnings: list[str] = []
    for line in (result.stderr + "\n" + result.stdout).splitlines():
        line = line.strip()
        if line.startswith("Error - "):
            errors.append(line[len("Error - "):])
        elif line.startswith("Warning - "):
            warnings.append(line[len("Warning - "):])
    return errors, warnings
