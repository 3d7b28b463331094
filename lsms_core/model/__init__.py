"""The LSMS network (encoder with SVLA, Full-Scale Decoder)."""

from .lsms import LSMS, LSMSOutput, build_model

__all__ = ["LSMS", "LSMSOutput", "build_model"]
