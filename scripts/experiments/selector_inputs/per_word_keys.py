"""The words the per-word figures are split by (per_word.py, eval_saved.py)."""
KEYS = ["second largest", "largest", "smallest", "most hypodense", "hypodense", "hyperdense", "isodense", "round",
        "irregular", "upper", "lower", "left", "right", "at the liver surface", "deep inside the liver"]


def keys_of(text):
    """The KEYS in ``text`` (a longer key hides the shorter ones inside it), sorted."""
    t = text.lower()
    out = []
    for k in KEYS:
        if k in t:
            out.append(k)
            t = t.replace(k, "#")
    return tuple(sorted(out))
