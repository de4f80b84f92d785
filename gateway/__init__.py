"""medrega-gateway: settings, database, CLI and HTTP API of the DICOM workflow service."""

__version__ = "0.1.0"
