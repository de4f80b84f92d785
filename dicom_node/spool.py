"""Durable storage of received objects, exactly as received.

Layout under ``settings.data_dir``::

    spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   received instances
    incoming/                                                            partial receptions (temp)
    quarantine/<date>/<uuid>.dcm                                         objects we could not accept
    replaced/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.<UTC time>.dcm
                                                                         filed instances that a
                                                                         changed re-send replaced

An instance is durable when its bytes and its name are on disk: the data are written to a temporary
name in the same file system, ``fsync``-ed, renamed into place (atomic, POSIX ``rename(2)``) and the
directory is ``fsync``-ed. Only then is the database row written and the C-STORE answered
(PS3.4 B.2.2: success means the SCP has taken responsibility for the instance).

UIDs are used as file names: they are validated (PS3.5 9.1, :func:`common.uids.valid_uid`)
before they reach the file system, so a malformed UID can never escape the spool folder.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.uids import InvalidUIDError, valid_uid

__all__ = [
    "SpoolError",
    "InsufficientDiskSpaceError",
    "SPOOL_DIR",
    "INCOMING_DIR",
    "QUARANTINE_DIR",
    "StoredFile",
    "instance_relpath",
    "incoming_dir",
    "free_disk_mb",
    "check_free_disk",
    "sha256_file",
    "data_set_offset",
    "data_set_sha256",
    "fsync_dir",
    "durable_move",
    "fsync_file",
    "sha256_fd",
    "fsync_fd",
    "place",
    "durable_write_bytes",
    "REPLACED_DIR",
    "keep_replaced",
]

SPOOL_DIR = "spool"
INCOMING_DIR = "incoming"
QUARANTINE_DIR = "quarantine"
REPLACED_DIR = "replaced"

_HASH_CHUNK = 1 << 20


class SpoolError(OSError):
    """The spool could not store an object."""


class InsufficientDiskSpaceError(SpoolError):
    """Free space in the data folder is below ``node.minimum_free_disk_mb``."""


@dataclass(frozen=True)
class StoredFile:
    """A file made durable in the spool."""

    path: Path  # absolute
    relpath: str  # relative to data_dir, POSIX separators
    size_bytes: int
    sha256: str


def instance_relpath(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """``spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (relative to data_dir)."""
    for name, uid in (
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
        ("SOPInstanceUID", sop_instance_uid),
    ):
        if not valid_uid(uid):
            raise InvalidUIDError(f"{name} is not a valid UID (PS3.5 9.1)")
    return f"{SPOOL_DIR}/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"


def incoming_dir(data_dir: Path) -> Path:
    """Folder for receptions in progress: on the spool's file system so rename is atomic."""
    path = data_dir / INCOMING_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_disk_mb(path: Path) -> float:
    """Space available to this (unprivileged) process in the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1024 * 1024)


def check_free_disk(data_dir: Path, minimum_mb: float) -> None:
    """Raise :class:`InsufficientDiskSpaceError` when less than ``minimum_mb`` is free."""
    if minimum_mb <= 0:
        return
    free = free_disk_mb(data_dir)
    if free < minimum_mb:
        raise InsufficientDiskSpaceError(
            f"only {free:.0f} MB free in {data_dir}, node.minimum_free_disk_mb is {minimum_mb:.0f}"
        )


def sha256_file(path: Path, *, skip: int = 0) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file from byte ``skip`` on, read in 1 MiB chunks (bounded
    memory)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(skip)
        buf = bytearray(_HASH_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def data_set_offset(path: Path) -> int:
    """Where the data set starts in a PS3.10 file the node wrote: after the 128-byte preamble,
    ``DICM`` and the File Meta Information group, whose length (0002,0000) is its first element
    (PS3.10 7.1, explicit VR little endian). Raises :class:`SpoolError` for another layout."""
    with open(path, "rb") as f:
        head = f.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        raise SpoolError(errno.EINVAL, f"{path.name} does not start with File Meta Information")
    return 144 + int.from_bytes(head[140:144], "little")


def data_set_sha256(path: Path) -> str:
    """SHA-256 of the data set of a stored file, its File Meta left out: what the node records
    for an instance (the hash the Upper Layer takes while the data set arrives), so that the
    node's identity in the File Meta can change without changing an instance's hash."""
    return sha256_file(path, skip=data_set_offset(path))[0]


def fsync_dir(path: Path) -> None:
    """Make the directory entry changes in ``path`` durable (rename, create)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(directory: Path, root: Path) -> None:
    """Create ``directory`` (under ``root``) and fsync every parent whose entries changed."""
    if directory.is_dir():
        return
    missing: list[Path] = []
    p = directory
    while not p.is_dir():
        missing.append(p)
        if p == root or p.parent == p:
            break
        p = p.parent
    directory.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage (may run in another thread: releases the GIL)."""
    _fsync_file(path)


def sha256_fd(fd: int) -> tuple[str, int]:
    """SHA-256 and size of the open file ``fd`` (read with ``pread``), then close it.

    Meant for a worker thread (hashing releases the GIL). Working on a descriptor opened
    beforehand, it is not disturbed by the file being renamed meanwhile.
    """
    try:
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, _HASH_CHUNK, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest(), offset
    finally:
        os.close(fd)


def fsync_fd(fd: int) -> None:
    """fsync the open file ``fd``, then close it (for a worker thread: releases the GIL)."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place(src: Path, data_dir: Path, relpath: str, *, sha256: str, size_bytes: int) -> StoredFile:
    """Rename ``src`` to ``data_dir/relpath`` without flushing anything: the caller flushes the
    data and the directory (:func:`fsync_dir`) before relying on it."""
    target = data_dir / relpath
    _makedirs_durable(target.parent, data_dir)
    try:
        os.replace(src, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return durable_move(src, data_dir, relpath, sha256=sha256, size_bytes=size_bytes)
        raise SpoolError(exc.errno, f"cannot store received object: {exc.strerror}") from exc
    return StoredFile(path=target, relpath=relpath, size_bytes=size_bytes, sha256=sha256)


def durable_move(
    src: Path, data_dir: Path, relpath: str, *, sha256: str, size_bytes: int, synced: bool = False
) -> StoredFile:
    """Make ``src`` durable and move it to ``data_dir/relpath`` (replacing a previous version).

    ``synced``: the caller already fsync-ed ``src``. ``src`` should be on the same file system
    (see :func:`incoming_dir`); when it is not, it is copied to a temporary name beside the target
    first, so the target is never half-written.
    """
    target = data_dir / relpath
    _makedirs_durable(target.parent, data_dir)
    try:
        if not synced:
            _fsync_file(src)
        os.replace(src, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise SpoolError(exc.errno, f"cannot store received object: {exc.strerror}") from exc
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, _HASH_CHUNK)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, target)
        except OSError as exc2:
            tmp.unlink(missing_ok=True)
            raise SpoolError(exc2.errno, f"cannot store received object: {exc2.strerror}") from exc2
        src.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return StoredFile(path=target, relpath=relpath, size_bytes=size_bytes, sha256=sha256)


def durable_write_bytes(data: bytes, data_dir: Path, relpath: str) -> StoredFile:
    """Write ``data`` durably to ``data_dir/relpath`` (temp name, fsync, rename, fsync dir)."""
    target = data_dir / relpath
    _makedirs_durable(target.parent, data_dir)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SpoolError(exc.errno, f"cannot write {relpath}: {exc.strerror}") from exc
    fsync_dir(target.parent)
    return StoredFile(
        path=target,
        relpath=relpath,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def keep_replaced(data_dir: Path, relpath: str, at: datetime.datetime) -> str:
    """Keep the filed instance at ``data_dir/relpath`` under ``replaced/`` before a changed
    re-send takes its place; the kept copy's path relative to ``data_dir``.

    The copy is a hard link (no bytes copied; a copy where the file system has no links), named
    after the instance's spool path and the UTC time ``at`` of the replacement, and durable
    (directory flushed) before the caller replaces the original.
    """
    inner = relpath.removeprefix(f"{SPOOL_DIR}/").removesuffix(".dcm")
    stamp = at.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    kept = f"{REPLACED_DIR}/{inner}.{stamp}.dcm"
    source, target = data_dir / relpath, data_dir / kept
    _makedirs_durable(target.parent, data_dir)
    try:
        try:
            os.link(source, target)
        except FileExistsError:
            pass  # kept already (a retried transaction)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            _fsync_file(tmp)
            os.replace(tmp, target)
    except OSError as exc:
        raise SpoolError(exc.errno, f"cannot keep the replaced instance: {exc.strerror}") from exc
    fsync_dir(target.parent)
    return kept
