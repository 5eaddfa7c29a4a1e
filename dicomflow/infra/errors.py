"""The infra package's expected failure."""

from __future__ import annotations

from dicomflow.errors import DicomflowError


class InfraError(DicomflowError):
    """Packaging, deploying or destroying the stack failed; the message says how to fix it."""
