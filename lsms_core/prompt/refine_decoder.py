"""Refine's own mask decoder: LiteMedSAM's decoder fine-tuned to outline the parts of LSMS's answers.

Zero-shot, LiteMedSAM redraws the default LSMS model's parts slightly worse than the model draws them on
the CT it was trained on (docs/prompts.md, "Refine"). This decoder was fine-tuned (image and prompt encoders
frozen) on RefLiTS's training split: boxes of its lesions, jittered, and the boxes of the default model's own
parts on the training expressions, each with the lesion it overlaps as target
(``scripts/experiments/refine/finetune_decoder.py``). Only Refine uses it; clicks and boxes keep LiteMedSAM's
own decoder, which is better for a box drawn around a lesion by hand.

The file is safetensors (no pickle: nothing in it can run): the decoder's tensors under their
``MaskDecoder`` names, and in the metadata the format, the image encoder it was trained with (LiteMedSAM's
SHA-256) and how it was made. Stored in float16 (half the size; masks unchanged, docs/prompts.md) and run
in float32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .sam_decoder import MaskDecoder

REFINE_DECODER_FILE = Path(__file__).resolve().parent.parent / "weights" / "litemedsam-refine-decoder.safetensors"
FORMAT_NAME = "lsms-refine-decoder"
FORMAT_VERSION = "1"
MAX_DECODER_BYTES = 256 << 20  # the decoder is 8 MB in float16, 16 MB in float32


def paired_decoder_path(checkpoint: str | os.PathLike) -> Path:
    """Where ``lsms-train-refine`` puts the refine decoder of an LSMS checkpoint file: next to it,
    ``<stem>.refine-decoder.safetensors``."""
    checkpoint = Path(checkpoint).expanduser()
    return checkpoint.with_name(f"{checkpoint.stem}.refine-decoder.safetensors")


def refine_decoder_for(checkpoint: str | os.PathLike) -> str:
    """The refine decoder Refine uses on the answers of ``checkpoint`` ("default" or a file): the one
    ``lsms-train-refine`` trained for it when it lies next to it, else ``"default"`` (the shipped one, trained on
    the default model's answers)."""
    if str(checkpoint) == "default":
        return "default"
    paired = paired_decoder_path(checkpoint)
    return str(paired) if paired.is_file() else "default"


class RefineDecoderError(ValueError):
    """A refine decoder file that cannot be used (missing, a pickle, damaged, another model's tensors)."""


def new_mask_decoder() -> MaskDecoder:
    """LiteMedSAM's mask decoder, untrained (the shapes its weights load into)."""
    return MaskDecoder(transformer_dim=256, num_multimask_outputs=3)


def save_refine_decoder(decoder: MaskDecoder, path: str | os.PathLike, image_encoder_sha256: str,
                        made_by: dict) -> Path:
    """Write ``decoder``'s tensors (float16) and the metadata to ``path`` (.safetensors); returns the path.

    image_encoder_sha256: the LiteMedSAM weights whose embeddings it was trained on; made_by: how (the
    script, its arguments, the data), kept in the metadata as JSON."""
    from safetensors.torch import save

    from ..atomic import atomic_write_bytes

    path = Path(path)
    tensors = {name: value.detach().to("cpu", torch.float16).contiguous()
               for name, value in decoder.state_dict().items()}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "image_encoder_sha256": image_encoder_sha256, "made_by": json.dumps(made_by, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def load_refine_decoder(path: str | os.PathLike | None = None) -> tuple[MaskDecoder, dict]:
    """The refine decoder (float32, CPU, eval mode) and its identity {name, sha256, source,
    image_encoder_sha256}. path: a file ``save_refine_decoder`` wrote; None for the shipped one.
    Raises RefineDecoderError naming what is wrong with the file."""
    from safetensors import SafetensorError, safe_open

    from .prompt_model import file_sha256

    path = Path(path).expanduser() if path is not None else REFINE_DECODER_FILE
    if not path.is_file():
        raise RefineDecoderError(f"refine decoder {path} does not exist" + (
            ": the installation is incomplete, reinstall lsms-napari" if path == REFINE_DECODER_FILE else ""))
    if path.stat().st_size > MAX_DECODER_BYTES:
        raise RefineDecoderError(f"{path} is {path.stat().st_size} bytes: far more than a mask decoder's 8-16 MB")
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[8:9] != b"{":  # a safetensors file opens with its header's length, then its JSON header
        raise RefineDecoderError(f"{path} is not a safetensors file (a PyTorch pickle? those can run code when "
                                 "loaded and are never opened): write it with save_refine_decoder")
    try:
        with safe_open(str(path), framework="pt") as opened:
            metadata = opened.metadata() or {}
            state = {name: opened.get_tensor(name).float() for name in opened.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise RefineDecoderError(f"{path} is not a readable safetensors file (truncated or damaged?): "
                                 f"{' '.join(str(error).split())[:200]}") from None
    if metadata.get("format") != FORMAT_NAME:
        raise RefineDecoderError(f"{path} is a safetensors file but not a refine decoder (no '{FORMAT_NAME}' "
                                 "metadata)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise RefineDecoderError(f"{path} has refine decoder format {metadata.get('format_version')!r}; this "
                                 f"lsms-napari reads format {FORMAT_VERSION}")
    decoder = new_mask_decoder()
    try:
        decoder.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RefineDecoderError(f"{path} does not hold LiteMedSAM's mask decoder: "
                                 f"{' '.join(str(error).split())[:300]}") from None
    identity = {"name": "LiteMedSAM refine decoder" if path == REFINE_DECODER_FILE else path.stem,
                "sha256": file_sha256(path), "source": "lsms_core/weights" if path == REFINE_DECODER_FILE
                else str(path), "image_encoder_sha256": metadata.get("image_encoder_sha256", "")}
    return decoder.eval(), identity
