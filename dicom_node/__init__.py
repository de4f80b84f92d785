"""DICOM node: association policy, C-ECHO/C-STORE SCP, durable spool, study assembly, C-STORE SCU."""
