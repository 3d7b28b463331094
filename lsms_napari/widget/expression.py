"""RefHL-Seg-style expressions from optional structured fields (paper section IV-A).

"A vascular tumor in segment VI of the liver, with a diameter of 7.5mm, irregular shape, clear
boundary, and non-ring enhancement." The free text, when given, comes first and wins; the fields
are kept with it only when it is the sentence they compose (``text_and_attributes``).
"""

from __future__ import annotations

from lsms_core.expressions import ExpressionError, clean_expression

# docs/plugin.md quotes this message: keep them the same.
EMPTY_EXPRESSION = ("the expression is empty: type what to segment, e.g. 'the largest hypodense lesion in the right "
                    "lobe', or fill the structured fields")
STATUS_TEXT_CHARS = 80  # an expression longer than this is cut with "…" in the status line

# The chest's findings (the X-ray and lung CT models' words: QaTa-COV19's sentences, docs/chest.md).
CHEST_TYPES = ("unilateral pulmonary infection", "bilateral pulmonary infection", "infection", "opacity",
               "ground-glass opacity", "consolidation")
LESION_TYPES = ("", "lesion", "tumour", "cyst", "hemangioma", "hepatocellular carcinoma", "metastasis",
                "focal nodular hyperplasia", "abscess", "nodule", *CHEST_TYPES)
# Lungs and their zones are the patient's (radiological convention: the patient's left is the image's right).
LUNG_LOCATIONS = ("left lung", "right lung", "both lungs", "upper left lung", "middle left lung", "lower left lung",
                  "upper right lung", "middle right lung", "lower right lung", "lower left lung and lower right lung")
LOCATIONS = ("", "segment I", "segment II", "segment III", "segment IV", "segment V", "segment VI",
             "segment VII", "segment VIII", "right lobe", "left lobe", "caudate lobe", *LUNG_LOCATIONS)
COUNTS = ("", "one", "two", "three", "four", "five", "six")  # infected areas (QaTa counts up to six lung zones)
SIZES = ("", "largest", "second largest", "smallest")
SHAPES = ("", "round", "oval", "irregular", "lobulated")
BOUNDARIES = ("", "clear", "ill-defined")
ENHANCEMENTS = ("", "ring", "non-ring", "arterial", "no")

# attribute field -> expression kind (schema.EXPRESSION_KINDS)
FIELD_KINDS = {"lesion_type": "type", "location": "location", "size": "size", "shape": "shape",
               "boundary": "boundary", "enhancement": "enhancement", "diameter_mm": "diameter", "count": "count"}


def compose_expression(free_text: str, fields: dict[str, str | float | None]) -> str:
    """The expression to segment: free text if given, else a sentence from the fields."""
    free = " ".join((free_text or "").split())
    if free:
        return free
    if fields.get("lesion_type") in CHEST_TYPES or fields.get("location") in LUNG_LOCATIONS or fields.get("count"):
        return _chest_sentence(fields)
    kind = fields.get("lesion_type") or "lesion"
    size = fields.get("size")
    text = f"The {size} {kind}" if size else f"A {kind}"
    location = fields.get("location")
    if location:
        text += f" in the {location} of the liver" if "lobe" in location else f" in {location} of the liver"
    details = []
    if fields.get("diameter_mm"):
        details.append(f"a diameter of {float(fields['diameter_mm']):.1f}mm")
    if fields.get("shape"):
        details.append(f"{fields['shape']} shape")
    if fields.get("boundary"):
        details.append(f"{fields['boundary']} boundary")
    if fields.get("enhancement"):
        details.append(f"{fields['enhancement']} enhancement")
    if details:
        text += ", with " + ", ".join(details[:-1]) + (" and " if len(details) > 1 else "") + details[-1]
    return text + "."


def _chest_sentence(fields: dict) -> str:
    """QaTa-COV19's sentence shape, which the X-ray model was trained on: "bilateral pulmonary infection, two
    infected areas, lower left lung and lower right lung." (parts the fields leave empty are left out)."""
    kind = fields.get("lesion_type") or "pulmonary infection"
    count, location = fields.get("count"), fields.get("location")
    if not kind.endswith("pulmonary infection"):  # "the consolidation in the left lung."
        return f"The {kind}" + (f" in the {location}" if location else "") + "."
    parts = [kind]
    if count:
        parts.append(f"{count} infected area{'' if count == 'one' else 's'}")
    if location:
        parts.append(location)
    return ", ".join(parts) + "."


def expression_kinds(fields: dict[str, str | float | None]) -> list[str]:
    return sorted({FIELD_KINDS[k] for k, v in fields.items() if v not in (None, "") and k in FIELD_KINDS})


def text_and_attributes(typed: str, fields: dict[str, str | float | None]) -> tuple[str, dict, bool]:
    """(expression, attributes to save with it, fields dropped) for the text box and the fields.

    Blank text (only spaces) with no field filled is refused (ExpressionError, EMPTY_EXPRESSION): it
    used to segment "A lesion." silently. Blank text with fields: the sentence they compose. Typed
    text keeps the fields only when it is that sentence (the composer wrote it); otherwise the
    fields would describe another lesion than the words ("the smallest lesion" saved with
    size=largest), so they are dropped and the third value is True.
    """
    filled = {k: v for k, v in fields.items() if v not in (None, "")}
    if not (typed or "").strip():
        if not filled:
            raise ExpressionError(EMPTY_EXPRESSION)
        return clean_expression(compose_expression("", filled)), filled, False
    text = clean_expression(typed)
    if filled and text == clean_expression(compose_expression("", filled)):
        return text, filled, False
    return text, {}, bool(filled)


def elide(text: str, limit: int = STATUS_TEXT_CHARS) -> str:
    """``text`` cut to its first ``limit`` characters and "…" when longer (the status line)."""
    return text if len(text) <= limit else text[:limit].rstrip() + "…"
