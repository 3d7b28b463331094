"""Build what ``lsms_core.quick`` runs: a checkpoint's text encoder and lesion selector exported as ONNX graphs
next to its LSMS graph (``lsms_core.compiled``), and the manifest that names them. Needs PyTorch and the
exporter (``onnx``, ``onnxscript``); 30-50 s of CPU once per checkpoint and text encoder folder (2 cores)."""

from __future__ import annotations

import copy
import json

import torch

from . import compiled, quick
from .atomic import atomic_write_bytes
from .candidates import feature_dim


class _TextGraph(torch.nn.Module):
    """What is exported of the text encoder: token ids (1,T) int64, mask (1,T) int64 -> words (1,T,C_l)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def quick_start_parts(segmenter):
    """Copies of the text encoder and the selector (None without one) that ``write_quick_start`` exports, taken
    now so that the segmenter keeps serving while a background thread exports them: float32 CPU eval modules.
    (LSMS's own graph is built by ``Segmenter``'s compiled part; it is copied here only if still missing.)"""
    if not segmenter.uses_text or not segmenter.text_encoder.native:
        raise ValueError("the PyTorch-free path needs a model that reads text with a plain BERT encoder "
                         "(tokenizer.json); this one runs through PyTorch only")
    selector = segmenter.model.selector
    return (copy.deepcopy(segmenter.text_encoder.model).float().cpu().eval(),
            None if selector is None else copy.deepcopy(selector).float().cpu().eval())


def write_quick_start(segmenter, parts=None):
    """Export what is missing of ``segmenter``'s graphs (LSMS at its input size, the text encoder, the selector)
    and write the manifest ``QuickSegmenter.open`` reads, atomically and last; its path. ``parts``: the text
    encoder and selector copies from ``quick_start_parts`` (default: taken now)."""
    text_model, selector = parts or quick_start_parts(segmenter)
    checkpoint, encoder = segmenter.checkpoint, segmenter.text_encoder
    size = checkpoint.config.preprocess.image_size
    text_dim = checkpoint.config.model.text_dim
    tokens = torch.export.Dim("tokens", min=1, max=512)
    paths = {"lsms": compiled.artefact_path(checkpoint.sha256, size),
             "text": compiled.artefact_path(checkpoint.sha256, None, f"text-{encoder.sha256[:16]}"),
             "selector": None if selector is None else compiled.artefact_path(checkpoint.sha256, None, "selector")}
    if not paths["lsms"].exists():
        compiled.export_onnx(compiled.model_copy(segmenter.model), size, paths["lsms"])
    if not paths["text"].exists():
        ids, mask = (torch.from_numpy(array) for array in encoder.tokenizer(["the larger lesion"], 8, True))
        compiled.export_module(_TextGraph(text_model), (ids, mask), paths["text"], ["ids", "mask"], ["words"],
                               {"ids": {1: tokens}, "mask": {1: tokens}})
    if selector is not None and not paths["selector"].exists():
        candidates = torch.export.Dim("candidates", min=1, max=65535)
        model = checkpoint.config.model
        width, count = feature_dim(model.decoder_channels, model.selector_clusters), 3
        example = (torch.randn(1, count, width), torch.ones(1, count, dtype=torch.bool),
                   torch.randn(1, 8, text_dim), torch.ones(1, 8))
        compiled.export_module(selector, example, paths["selector"], ["features", "valid", "words", "word_mask"],
                               ["logits"], {"features": {1: candidates}, "valid": {1: candidates},
                                            "words": {1: tokens}, "word_mask": {1: tokens}})
    manifest = {"format": quick.FORMAT, "checkpoint_sha256": checkpoint.sha256, "text_sha256": encoder.sha256,
                "text_directory": str(encoder.directory), "torch": torch.__version__,
                "graphs": {key: None if path is None else path.name for key, path in paths.items()}}
    target = quick.manifest_path(checkpoint.sha256, encoder.directory)
    atomic_write_bytes(target, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return target

