"""lsms_napari: the napari plugin of LSMS (reader, "Referring Lesion Segment" widget, sample data).

Imports lsms_core, never the other way round.
"""

__version__ = "0.1.0"
