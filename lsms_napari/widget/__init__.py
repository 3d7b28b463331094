"""The "Referring Lesion Segment" widget."""

from .widget import ReferringLesionSegmentWidget

__all__ = ["ReferringLesionSegmentWidget"]
