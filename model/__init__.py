"""MedRegA inference: DICOM pixels -> model input, prompts, backends, answer parsing."""
