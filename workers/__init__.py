"""Celery app and tasks: process a complete study, write SRs, deliver them."""
