"""The rules for a referring expression's text, in one light module (no torch): what counts as
empty, how long a text may be, how it is cleaned. Used by inference (before tokenising), the CLI,
the widget, the dataset schema and so the validator."""

from __future__ import annotations

import re
import unicodedata

MAX_EXPRESSION_CHARS = 2000  # a longer expression is cut at a word boundary (the encoder reads its first tokens)
MAX_EXPRESSION_INPUT_CHARS = 100_000  # a longer text is refused before it is even looked at (a file, a bug)
# Control characters become spaces; lone surrogates (undecodable bytes of a command line) become U+FFFD,
# which the tokenizer drops, instead of failing deep inside it.
_CLEAN = {"Cc": " ", "Cs": "\ufffd"}
_VISIBLE_ASCII = re.compile(r"[!-~]")


class ExpressionError(ValueError):
    """The referring expression cannot be used; the message says why."""


def has_visible_text(text: str) -> bool:
    """True when ``text`` holds a character that shows: not whitespace, not a control, format (zero-width,
    bidi) or surrogate character, not U+FFFD. The rule ``clean_expression`` applies, quick for ASCII."""
    if text.isascii():
        return _VISIBLE_ASCII.search(text) is not None
    return any(ch.isprintable() and not ch.isspace() and ch != "\ufffd" for ch in text)


def too_long_message(length: int) -> str:
    return (f"the expression is {length:,} characters long; at most {MAX_EXPRESSION_INPUT_CHARS:,} are accepted "
            f"(and only the first {MAX_EXPRESSION_CHARS:,} are used): describe the lesion in a sentence")


def clean_expression(text: str) -> str:
    """Whitespace-normalised expression without control characters, cut to MAX_EXPRESSION_CHARS.

    Raises ExpressionError if it is not text, holds nothing visible, or is longer than
    MAX_EXPRESSION_INPUT_CHARS (checked first, so a 200 MB string costs nothing). A longer
    expression is cut at the last word boundary before the limit (the text encoder reads only
    its first ``max_tokens`` tokens anyway), so any text of any script works.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"the expression must be text, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_INPUT_CHARS:
        raise ExpressionError(too_long_message(len(text)))
    cleaned = " ".join("".join(_CLEAN.get(unicodedata.category(ch), ch) if not ch.isspace() else ch
                               for ch in text).split())
    if not has_visible_text(cleaned):
        raise ExpressionError("the expression is empty: describe the lesion, e.g. "
                              "'the largest hypodense lesion in the right lobe'")
    if len(cleaned) > MAX_EXPRESSION_CHARS:
        cut = cleaned[:MAX_EXPRESSION_CHARS + 1]
        cleaned = cut.rsplit(" ", 1)[0] if " " in cut[MAX_EXPRESSION_CHARS // 2:] else cut[:MAX_EXPRESSION_CHARS]
    return cleaned
