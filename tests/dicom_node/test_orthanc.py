"""Orthanc as the hospital PACS: it sends a study to the node and receives our SRs back."""

from __future__ import annotations

import pydicom
import pytest
from sqlalchemy import select

from sender.scu import deliver, echo
from gateway import admin
from common.db import session_scope
from common.models import DeliveryState, Document, Instance, Study
from tests.dicom_node.conftest import NODE_AE
from tests.dicom_node.corpus import write_study
from tests.sender.test_scu import make_delivery
from tests.peers.orthanc import orthanc

pytestmark = pytest.mark.peers


def test_orthanc_sends_a_study_and_receives_the_sr(node, settings, tmp_path):
    study_uid, files = write_study(tmp_path / "study", [4, 3])
    with orthanc(tmp_path / "orthanc", modalities={"medrega": (NODE_AE, "127.0.0.1", node.port)}) as pacs:
        with session_scope(settings.database_url) as s:
            admin.add_calling_ae(s, "ORTHANC", host="127.0.0.1")  # only the PACS may send
            admin.add_destination(s, "orthanc", "ORTHANC", "127.0.0.1", pacs.dicom_port)
        assert pacs.echo("medrega")
        ids = [pacs.upload(f) for f in files]
        pacs.store("medrega", ids)

        with session_scope(settings.database_url) as s:
            study = s.scalars(select(Study)).one()
            assert study.study_instance_uid == study_uid
            assert study.calling_ae_title == "ORTHANC"
            received = set(s.scalars(select(Instance.sop_instance_uid)).all())
        assert received == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}

        assert echo(settings, "orthanc") == 0
        delivery_id = make_delivery(settings, "orthanc")
        result = deliver(settings, delivery_id)
        assert result.state is DeliveryState.SENT, result.error
        with session_scope(settings.database_url) as s:
            sr_uid = s.scalars(select(Document.sop_instance_uid)).one()
        tags = pacs.find_instance(sr_uid)
        assert tags is not None, "Orthanc does not have the SR"
        assert tags["SOPClassUID"] == result.sop_class_uid
