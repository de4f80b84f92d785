"""Receiving what PACS really send: every transfer syntax, byte-exact; refusals and quarantine."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from common.db import session_scope
from common.models import Instance, QuarantinedInstance, Study
from tests.conftest import require_tool
from tests.dicom_node.conftest import NODE_AE
from tests.dicom_node.corpus import sample, write_series
from tests.peers.dcmtk import peer_env, storescp, storescu, write_association_profile

pytestmark = pytest.mark.peers


def _fresh_uids(src: Path, dst: Path) -> Path:
    """Copy a sample with new Study/Series/SOP Instance UIDs; pixel data bytes untouched."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst)
    return dst


def _dcmtk(tool: str, args: list[str], src: Path, dst: Path) -> Path:
    subprocess.run([require_tool(tool), *args, str(src), str(dst)], check=True, env=peer_env(),
                   capture_output=True)
    return dst


# name -> (transfer syntax UID, how to make the file in a folder)
TRANSFER_SYNTAX_CASES = {
    "implicit-le": ("1.2.840.10008.1.2", lambda d: _fresh_uids(sample("MR_small_implicit.dcm"), d / "a.dcm")),
    "explicit-le": ("1.2.840.10008.1.2.1", lambda d: _fresh_uids(sample("CT_small.dcm"), d / "a.dcm")),
    "explicit-be": ("1.2.840.10008.1.2.2", lambda d: _fresh_uids(sample("MR_small_bigendian.dcm"), d / "a.dcm")),
    "deflated": ("1.2.840.10008.1.2.1.99", lambda d: _fresh_uids(sample("image_dfl.dcm"), d / "a.dcm")),
    "jpeg-baseline": ("1.2.840.10008.1.2.4.50", lambda d: _fresh_uids(sample("SC_rgb_jpeg_dcmtk.dcm"), d / "a.dcm")),
    "jpeg-extended": ("1.2.840.10008.1.2.4.51", lambda d: _fresh_uids(sample("JPGExtended.dcm"), d / "a.dcm")),
    "jpeg-lossless-p14": ("1.2.840.10008.1.2.4.57", lambda d: _dcmtk(
        "dcmcjpeg", ["+el"], _fresh_uids(sample("CT_small.dcm"), d / "in.dcm"), d / "a.dcm")),
    "jpeg-lossless-sv1": ("1.2.840.10008.1.2.4.70", lambda d: _fresh_uids(sample("SC_rgb_jpeg_gdcm.dcm"), d / "a.dcm")),
    "jpeg-ls-lossless": ("1.2.840.10008.1.2.4.80", lambda d: _fresh_uids(sample("MR_small_jpeg_ls_lossless.dcm"), d / "a.dcm")),
    "jpeg-ls-near-lossless": ("1.2.840.10008.1.2.4.81", lambda d: _fresh_uids(sample("JPEGLSNearLossless_08.dcm"), d / "a.dcm")),
    "jpeg2000-lossless": ("1.2.840.10008.1.2.4.90", lambda d: _fresh_uids(sample("MR_small_jp2klossless.dcm"), d / "a.dcm")),
    "jpeg2000": ("1.2.840.10008.1.2.4.91", lambda d: _fresh_uids(sample("JPEG2000.dcm"), d / "a.dcm")),
    "rle-lossless": ("1.2.840.10008.1.2.5", lambda d: _dcmtk(
        "dcmcrle", [], _fresh_uids(sample("CT_small.dcm"), d / "in.dcm"), d / "a.dcm")),
}


def _data_set(raw: bytes) -> bytes:
    meta_len = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL value, PS3.10 7.1
    return raw[144 + meta_len:]


@pytest.mark.parametrize("case", sorted(TRANSFER_SYNTAX_CASES))
def test_transfer_syntax_is_received_byte_exact(case, node, settings, tmp_path):
    """storescu proposes exactly the file's transfer syntax; the node stores the data set as it
    came over the wire (byte-identical to what DCMTK storescp writes for the same transfer) and the
    stored file decodes to the same pixels as the original."""
    uid, make = TRANSFER_SYNTAX_CASES[case]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    original = make(src_dir)
    ds = pydicom.dcmread(original, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == uid
    profile = write_association_profile(tmp_path / "p.cfg", [(ds.SOPClassUID, [uid])])
    args = ["-xf", str(profile[0]), profile[1]]

    storescu("127.0.0.1", node.port, [original], called_ae=NODE_AE, extra_args=args)
    with storescp(tmp_path / "ref", ae_title="REF", profile=profile) as ref:
        storescu("127.0.0.1", ref.port, [original], called_ae="REF", extra_args=args)
        (reference,) = ref.wait_for_files(1)

    with session_scope(settings.database_url) as s:
        (inst,) = s.scalars(select(Instance)).all()
    assert inst.transfer_syntax_uid == uid
    stored = settings.data_dir / inst.path
    ours, theirs = _data_set(stored.read_bytes()), _data_set(reference.read_bytes())
    if uid == "1.2.840.10008.1.2.1.99":
        # storescp re-deflates what it writes; compare the inflated data sets (PS3.5 A.5)
        ours, theirs = zlib.decompress(ours, -15), zlib.decompress(theirs, -15)
    assert ours == theirs
    assert np.array_equal(pydicom.dcmread(stored).pixel_array, pydicom.dcmread(original).pixel_array)


def _raw_store(port: int, path: Path, calling_ae: str = "RAWSCU") -> int:
    """C-STORE a file's bytes as they are (pynetdicom with STORE_SEND_CHUNKED_DATASET streams a
    file without decoding it): DCMTK cannot send a data set it cannot parse."""
    from pynetdicom import _config

    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def _broken_file(path: Path, body: bytes, sop_instance_uid: str) -> Path:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID, CTImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(f), meta, enforce_standard=True)
        f.write(body)
    return path


def test_unparsable_object_is_refused_and_quarantined(node, settings, tmp_path):
    uid = generate_uid()
    # (0008,0016) UI then (0010,0010) PN claiming 20000 bytes of which only a few follow
    body = (b"\x08\x00\x16\x00UI\x1a\x00" + b"1.2.840.10008.5.1.4.1.1.2\x00"
            + b"\x10\x00\x10\x00PN\x20\x4e" + b"DOE^JOHN")
    path = _broken_file(tmp_path / "broken.dcm", body, uid)
    status = _raw_store(node.port, path)
    assert 0xC000 <= status <= 0xCFFF
    with session_scope(settings.database_url) as s:
        (q,) = s.scalars(select(QuarantinedInstance)).all()
        assert s.scalars(select(Instance)).all() == []
        assert s.scalars(select(Study)).all() == []
    assert q.affected_sop_instance_uid == uid
    assert q.calling_ae_title == "RAWSCU"
    assert q.peer_address == "127.0.0.1"
    assert q.reason
    assert "DOE" not in q.reason  # no patient data in the reason
    kept = settings.data_dir / q.path
    assert kept.is_file()
    assert _data_set(kept.read_bytes()) == body


def test_missing_study_instance_uid_is_refused_with_c001(node, settings, tmp_path):
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "nostudy.dcm")
    proc = storescu("127.0.0.1", node.port, [tmp_path / "nostudy.dcm"], called_ae=NODE_AE, check=False,
                    extra_args=["-d"])
    assert proc.returncode != 0
    assert "0xc001" in (proc.stdout + proc.stderr).lower()
    with session_scope(settings.database_url) as s:
        (q,) = s.scalars(select(QuarantinedInstance)).all()
    assert "StudyInstanceUID is missing" in q.reason


def test_free_disk_below_the_floor_refuses_with_a700_and_writes_nothing(settings_factory, tmp_path):
    from dicom_node.scp import StorageSCP

    settings = settings_factory(node={"minimum_free_disk_mb": 1e12})  # an exabyte: never free
    files = write_series(tmp_path / "s", 2)
    with StorageSCP(settings) as node:
        proc = storescu("127.0.0.1", node.port, files, called_ae=NODE_AE, check=False, extra_args=["-d"])
    assert proc.returncode != 0
    assert "0xa700" in (proc.stdout + proc.stderr).lower()
    with session_scope(settings.database_url) as s:
        assert s.scalars(select(Instance)).all() == []
        assert s.scalars(select(Study)).all() == []
    assert not (settings.data_dir / "spool").exists() or not any((settings.data_dir / "spool").rglob("*.dcm"))
    assert list((settings.data_dir / "incoming").iterdir()) == []


def test_partial_receptions_of_a_previous_run_are_cleared_at_start(settings):
    """A reception cut short by a crash was never answered with success: its file is removed."""
    from dicom_node.scp import StorageSCP

    incoming = settings.data_dir / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "rx-leftover.dcm").write_bytes(b"partial")
    with StorageSCP(settings):
        assert list(incoming.iterdir()) == []


def _large_multiframe(path: Path, frames: int, rows: int = 1024, cols: int = 1024) -> Path:
    """A multi-frame CT of frames x rows x cols x 16 bits, written without holding it in memory."""
    from pydicom.filewriter import dcmwrite

    ds = pydicom.dcmread(sample("CT_small.dcm"), stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    for tag in [e.tag for e in ds if e.tag.group > 0x0028]:
        del ds[tag]
    dcmwrite(path, ds, enforce_file_format=True)
    frame = np.arange(rows * cols, dtype=np.uint16).tobytes()
    with open(path, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (len(frame) * frames).to_bytes(4, "little"))
        for _ in range(frames):
            f.write(frame)
    return path


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


@pytest.mark.slow
def test_a_large_multiframe_is_received_without_holding_it_in_memory(node, settings, tmp_path):
    path = _large_multiframe(tmp_path / "big.dcm", frames=300)  # 600 MiB of pixel data
    size = path.stat().st_size
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _vm("VmRSS")
    storescu("127.0.0.1", node.port, [path], called_ae=NODE_AE, timeout=300)
    peak = _vm("VmHWM")
    with session_scope(settings.database_url) as s:
        (inst,) = s.scalars(select(Instance)).all()
    assert inst.number_of_frames == 300 and (inst.rows, inst.columns) == (1024, 1024)
    stored = settings.data_dir / inst.path
    assert stored.stat().st_size == inst.size_bytes
    assert inst.size_bytes >= size - 1024  # the whole object (our file meta may differ slightly)
    assert peak - baseline < 64 * 1024 * 1024, f"RSS grew by {(peak - baseline) / 2**20:.0f} MiB"


def test_series_filed_under_another_study_is_refused_with_c003(node, settings, tmp_path):
    (first,) = write_series(tmp_path / "a", 1)
    storescu("127.0.0.1", node.port, [first], called_ae=NODE_AE)
    ds = pydicom.dcmread(first)
    ds.StudyInstanceUID = generate_uid()  # same series, another study
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "conflict.dcm")
    proc = storescu("127.0.0.1", node.port, [tmp_path / "conflict.dcm"], called_ae=NODE_AE, check=False,
                    extra_args=["-d"])
    assert "0xc003" in (proc.stdout + proc.stderr).lower()
    with session_scope(settings.database_url) as s:
        (q,) = s.scalars(select(QuarantinedInstance)).all()
        assert len(s.scalars(select(Instance)).all()) == 1
    assert "another study" in q.reason
    assert (settings.data_dir / q.path).is_file()
    assert not list((settings.data_dir / "spool").glob(f"{ds.StudyInstanceUID}/**/*.dcm"))


def test_instances_over_64_kib_are_filed_from_the_head_parsed_in_transit(node, settings, tmp_path):
    """Data sets larger than the head are parsed while their pixel data arrive; what is filed
    must be what the whole file says (the refusal on this path: test_upper_layer.py)."""
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.Rows, ds.Columns = 256, 256
    ds.PixelData = np.arange(256 * 256, dtype=np.int16).tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    good = tmp_path / "big.dcm"
    ds.save_as(good, enforce_file_format=True)
    assert good.stat().st_size > 64 * 1024
    assert _raw_store(node.port, good) == 0x0000
    with session_scope(settings.database_url) as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)).one()
        assert (row.rows, row.columns, row.instance_number) == (256, 256, int(ds.InstanceNumber))



@pytest.mark.postgres
def test_database_lost_mid_association_refuses_with_a701_and_the_resend_is_filed_once(postgres_url, tmp_path):
    """PostgreSQL goes away while an association is open (its backends terminated, no new
    connections allowed): the C-STORE is answered 0xA701, C-ECHO still works, and once the
    database is back the sender's re-send is filed once, on the same association."""
    import psycopg

    from dicom_node.scp import StorageSCP
    from common.db import upgrade
    from pynetdicom.sop_class import CTImageStorage, Verification
    from tests.conftest import POSTGRES_ADMIN_URL
    from tests.dicom_node.conftest import make_settings

    upgrade(postgres_url)
    name = postgres_url.rsplit("/", 1)[1]
    first, second = (pydicom.dcmread(p) for p in write_series(tmp_path / "s", 2))

    def database(allow: bool) -> None:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
            if not allow:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    with StorageSCP(make_settings(tmp_path / "data", postgres_url)) as node:
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(first).Status == 0x0000  # the series is filed (and cached)
            database(allow=False)
            try:
                assert assoc.send_c_store(second).Status == 0xA701
                assert assoc.send_c_echo().Status == 0x0000
            finally:
                database(allow=True)
            assert assoc.send_c_store(second).Status == 0x0000
            assert assoc.send_c_store(second).Status == 0x0000  # an identical re-send again
        finally:
            assoc.release()
    with session_scope(postgres_url) as s:
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
    assert [r.sop_instance_uid for r in rows] == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert rows[1].duplicate_count == 1
    filed = pydicom.dcmread(tmp_path / "data" / rows[1].path)
    assert filed.SOPInstanceUID == second.SOPInstanceUID
    assert filed.PixelData == second.PixelData
