"""Exceptions raised by :mod:`sr_writer` (one class per way a caller can act on a failure)."""

from __future__ import annotations

__all__ = [
    "SRWriterError",
    "InvalidContentError",
    "UnsupportedImageError",
    "NoAcceptedSRClassError",
    "NotConvertibleError",
    "WriteError",
    "RenderError",
    "FontNotFoundError",
    "SourceImageNotFoundError",
]


class SRWriterError(Exception):
    """Base class of every error raised by :mod:`sr_writer`."""


class InvalidContentError(SRWriterError, ValueError):
    """The :class:`~sr_writer.content.ReportContent` handed in breaks the input contract.

    Examples: a region that references an instance missing from ``evidence``, a box outside
    the image, two regions sharing one Tracking UID, an unknown language.
    """


class UnsupportedImageError(SRWriterError):
    """A presentation state cannot be made for an image (reason in the message)."""


class NoAcceptedSRClassError(SRWriterError):
    """The destination accepts none of the SR storage SOP classes we can produce."""

    def __init__(self, accepted: object) -> None:
        super().__init__(
            "destination accepts none of Comprehensive 3D SR, Comprehensive SR, Enhanced SR or "
            f"Basic Text SR (accepted SOP classes: {accepted!r})"
        )


class NotConvertibleError(SRWriterError):
    """A document cannot be converted to the requested (less capable) SR class."""


class WriteError(SRWriterError, OSError):
    """A dataset could not be written to its final path."""


class RenderError(SRWriterError):
    """A rendering of an SR over its source image could not be produced."""


class FontNotFoundError(RenderError):
    """No font able to draw Chinese text was found."""


class SourceImageNotFoundError(RenderError):
    """An image referenced by the SR is not among the files given."""
