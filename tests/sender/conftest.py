"""The DICOM node's fixtures (settings on a temp data folder, a running StorageSCP) for sender tests."""

from tests.dicom_node.conftest import node, settings, settings_factory  # noqa: F401
