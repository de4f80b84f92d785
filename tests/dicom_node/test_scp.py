"""The Storage SCP driven by DCMTK storescu/echoscu: what is filed, how, and what is answered."""

from __future__ import annotations

import concurrent.futures
import hashlib

import pydicom
import pytest
from sqlalchemy import func, select

from common.db import session_scope
from common.models import Instance, Series, Study, StudyState
from tests.dicom_node.conftest import NODE_AE
from tests.dicom_node.corpus import write_series, write_study
from dicom_node.spool import data_set_offset, data_set_sha256
from tests.peers.dcmtk import echoscu, storescu

pytestmark = pytest.mark.peers


def _rows(settings, model):
    with session_scope(settings.database_url) as s:
        return s.scalars(select(model)).all()


def test_c_echo_from_echoscu(node):
    proc = echoscu("127.0.0.1", node.port, called_ae=NODE_AE)
    assert proc.returncode == 0, proc.stderr


def test_port_zero_binds_an_ephemeral_port(node, settings):
    assert settings.node.port == 0
    assert 1024 < node.port < 65536


def test_study_from_storescu_is_filed_and_recorded(node, settings, tmp_path):
    study_uid, files = write_study(tmp_path / "study", [3, 2])
    storescu("127.0.0.1", node.port, [tmp_path / "study"], called_ae=NODE_AE, calling_ae="CT_SCANNER")

    studies = _rows(settings, Study)
    assert [s.study_instance_uid for s in studies] == [study_uid]
    study = studies[0]
    assert study.state is StudyState.RECEIVING
    assert study.calling_ae_title == "CT_SCANNER"
    assert study.last_received_at is not None
    assert len(_rows(settings, Series)) == 2
    instances = _rows(settings, Instance)
    assert len(instances) == 5
    originals = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    for inst in instances:
        ds = pydicom.dcmread(originals[inst.sop_instance_uid], stop_before_pixels=True)
        assert inst.path == f"spool/{study_uid}/{ds.SeriesInstanceUID}/{inst.sop_instance_uid}.dcm"
        stored = settings.data_dir / inst.path
        data = stored.read_bytes()
        assert inst.sha256 == hashlib.sha256(data[data_set_offset(stored):]).hexdigest()
        assert inst.size_bytes == len(data)
        assert (inst.rows, inst.columns, inst.number_of_frames) == (128, 128, None)
        assert inst.instance_number == ds.InstanceNumber
        assert inst.image_position_patient == [float(v) for v in ds.ImagePositionPatient]
        assert inst.image_orientation_patient == [float(v) for v in ds.ImageOrientationPatient]
        assert inst.pixel_spacing == [float(v) for v in ds.PixelSpacing]
        assert inst.calling_ae_title == "CT_SCANNER"
        assert inst.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    # nothing left behind in the reception folder
    assert list((settings.data_dir / "incoming").iterdir()) == []


def test_identical_resend_is_counted_not_processed_twice(node, settings, tmp_path):
    files = write_series(tmp_path / "s", 2)
    storescu("127.0.0.1", node.port, files, called_ae=NODE_AE)
    with session_scope(settings.database_url) as s:
        study = s.scalars(select(Study)).one()
        study.state = StudyState.COMPLETE
        before = study.last_received_at

    storescu("127.0.0.1", node.port, files, called_ae=NODE_AE)  # storescu exits 0: success

    with session_scope(settings.database_url) as s:
        study = s.scalars(select(Study)).one()
        assert study.state is StudyState.COMPLETE
        assert study.last_received_at == before
        counts = s.scalars(select(Instance.duplicate_count)).all()
        assert counts == [1, 1]


def test_new_instance_reopens_a_complete_study(node, settings, tmp_path):
    study_uid, _ = write_study(tmp_path / "a", [2])
    storescu("127.0.0.1", node.port, [tmp_path / "a"], called_ae=NODE_AE)
    with session_scope(settings.database_url) as s:
        s.scalars(select(Study)).one().state = StudyState.COMPLETE

    write_series(tmp_path / "b", 1, study_uid=study_uid)
    storescu("127.0.0.1", node.port, [tmp_path / "b"], called_ae=NODE_AE)

    with session_scope(settings.database_url) as s:
        assert s.scalars(select(Study)).one().state is StudyState.RECEIVING
        assert s.scalar(select(func.count(Instance.id))) == 3


def test_changed_instance_with_same_uid_replaces_the_stored_bytes(node, settings, tmp_path):
    (path,) = write_series(tmp_path / "s", 1)
    storescu("127.0.0.1", node.port, [path], called_ae=NODE_AE)
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "corrected"
    ds.save_as(path)
    storescu("127.0.0.1", node.port, [path], called_ae=NODE_AE)
    (inst,) = _rows(settings, Instance)
    assert inst.duplicate_count == 0
    stored = settings.data_dir / inst.path
    assert inst.sha256 == data_set_sha256(stored)
    assert pydicom.dcmread(stored).SeriesDescription == "corrected"


def test_several_associations_at_once_file_one_study(node, settings, tmp_path):
    study_uid = pydicom.uid.generate_uid()
    folders = []
    for n in range(4):
        write_series(tmp_path / f"s{n}", 5, study_uid=study_uid)
        folders.append(tmp_path / f"s{n}")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        procs = list(pool.map(
            lambda f: storescu("127.0.0.1", node.port, [f], called_ae=NODE_AE, calling_ae="MOD"), folders
        ))
    assert all(p.returncode == 0 for p in procs)
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count(Study.id))) == 1
        assert s.scalar(select(func.count(Series.id))) == 4
        assert s.scalar(select(func.count(Instance.id))) == 20


@pytest.mark.parametrize("proposed,accepted", [
    (["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"], "1.2.840.10008.1.2.1"),  # never induce lossy
    (["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2"], "1.2.840.10008.1.2"),
    (["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80"], "1.2.840.10008.1.2.4.80"),  # keep lossless compression
    (["1.2.840.10008.1.2.4.91"], "1.2.840.10008.1.2.4.91"),  # what the SCU holds, if that is all
    (["1.2.840.10008.1.2.4.100"], None),  # MPEG-2 video: refused
])
def test_transfer_syntax_choice(node, proposed, accepted):
    from pynetdicom import AE

    ae = AE(ae_title="SCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", proposed)  # Secondary Capture
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        assert assoc.is_established
        chosen = [cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                  if cx.abstract_syntax == "1.2.840.10008.5.1.4.1.1.7"]
        assert chosen == ([accepted] if accepted else [])
    finally:
        assoc.release()
