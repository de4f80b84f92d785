"""Sending results to destinations: C-STORE SCU and C-ECHO (PS3.4 B, A.4) through pynetdicom."""
