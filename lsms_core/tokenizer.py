"""A BERT folder's tokenizer (its ``tokenizer.json``, run by the ``tokenizers`` library): expressions ->
token ids, as transformers' fast tokenizer gives them. No PyTorch (``lsms_core.quick`` uses it too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class BertTokenizer:
    """The folder's ``tokenizer.json`` through the ``tokenizers`` library: (B,T) ids and mask, truncated
    to ``max_length``, padded to the longest or to ``max_length``, as transformers' fast tokenizer."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        special = json.loads((directory / "special_tokens_map.json").read_text(encoding="utf-8")) \
            if (directory / "special_tokens_map.json").is_file() else {}
        pad = special.get("pad_token", "[PAD]")
        self.pad_token = pad["content"] if isinstance(pad, dict) else str(pad)
        pad_id = self._tokenizer.token_to_id(self.pad_token)
        if pad_id is None:
            raise ValueError(f"{directory}: the padding token {self.pad_token!r} is not in tokenizer.json")
        self.pad_token_id = int(pad_id)

    def __call__(self, texts: list[str], max_length: int, pad_to_max: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both (B,T) int64 NumPy arrays."""
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token,
                                       length=max_length if pad_to_max else None)
        encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        return ids, mask
