"""lsms_core: the LSMS model, its losses, text encoder, preprocessing, inference and dataset I/O.

Imports no Qt and no napari. Heavy submodules (transformers) load only when used.
"""

__version__ = "0.1.0"
