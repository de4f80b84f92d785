"""DICOM SR (PS3.16 TID 1500) and presentation-state writing for MedRegA findings."""
