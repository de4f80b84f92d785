"""Writing datasets to disk: atomically, as Explicit VR Little Endian Part 10 files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from .errors import WriteError

__all__ = ["write_dataset", "IMPLEMENTATION_VERSION_NAME"]

#: Implementation Version Name (0002,0013) of files we write (SH, 16 characters).
IMPLEMENTATION_VERSION_NAME = "MEDREGA_GW"


def _file_meta(dataset: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def write_dataset(dataset: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``dataset`` to ``path`` as a Part 10 file (PS3.10 7.1), atomically.

    The file is written under a temporary name in the same directory, flushed and fsynced,
    then renamed over ``path`` (and the directory fsynced), so a reader or a crash never
    sees a half-written file. The transfer syntax is always Explicit VR Little Endian and
    the File Meta Information is rebuilt from the dataset. Returns the final path.
    Raises :class:`~sr_writer.errors.WriteError` on failure (the temporary file is removed).
    """
    target = Path(path)
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not dataset.get(keyword):
            raise WriteError(f"cannot write a dataset without {keyword} to {target}")
    dataset.file_meta = _file_meta(dataset)
    dataset.preamble = b"\x00" * 128
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise WriteError(f"could not create a temporary file next to {target}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True, implicit_vr=False, little_endian=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except Exception as exc:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise WriteError(f"could not write {target}: {exc}") from exc
    return target
