"""The mock upstream's embeddings: deterministic unit vectors from a hash of each input, in OpenAI's shapes.

Values are float32 (what OpenAI's models return), so an answer in `float` and the same answer in `base64`
(float32 little-endian bytes, as OpenAI encodes them) decode to exactly the same numbers.
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import sys
from typing import Any

DEFAULT_DIMENSIONS = 1536  # text-embedding-3-small's
MAX_DIMENSIONS = 3072  # text-embedding-3-large's
_SCALE = 2.0 / 2**32


def vector(text: str, dimensions: int) -> list[float]:
    """A unit vector of float32 values that depends only on the text and the dimensions."""
    seed = hashlib.sha256(f"{dimensions}:{text}".encode()).digest()
    words = array.array("I", hashlib.shake_256(seed).digest(4 * dimensions))
    raw = [word * _SCALE - 1.0 for word in words]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return array.array("f", [value / norm for value in raw]).tolist()


def encoded(values: list[float]) -> str:
    packed = array.array("f", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def input_texts(value: Any) -> list[str]:
    """Each input as text (token arrays as their ids joined by spaces); ValueError when malformed."""
    items = [value] if isinstance(value, str) or _is_tokens(value) else value
    if not isinstance(items, list) or not items:
        raise ValueError("'input' must be a string, an array of strings, or token arrays.")
    texts = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif _is_tokens(item):
            texts.append(" ".join(map(str, item)))
        else:
            raise ValueError("'input' must be a string, an array of strings, or token arrays.")
    return texts


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(item) is int for item in value)


def embeddings_body(model: str, texts: list[str], dimensions: int, as_base64: bool) -> dict[str, Any]:
    data = []
    for index, text in enumerate(texts):
        values = vector(text, dimensions)
        embedding = encoded(values) if as_base64 else values
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(prompt_tokens(text) for text in texts)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def prompt_tokens(text: str) -> int:
    return len(text) // 4 + 1
