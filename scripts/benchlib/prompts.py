"""Deterministic benchmark prompts: filler text of a chosen token length and synthetic images.

Each measured run gets its own `tag`, which changes the text right after the chat template's
fixed head and the image's pixels, so no prefix or vision cache can serve one run from
another (prefix-cache sections reuse a tag on purpose).
"""

from __future__ import annotations

import base64
import io
import random
from typing import Any

_TEXT = (
    "the robot arm moves slowly over a wooden table where a red cube a blue bowl and a "
    "green bottle stand next to each other while a camera above records every frame of the "
    "episode so that later an annotator can describe what happened which object was picked "
    "first how long the grasp took and whether anything fell over during the motion"
)
WORDS = tuple(_TEXT.split(" "))


def filler(n_words: int, tag: str = "") -> str:
    """`n_words` of plain English-like text, the same for the same arguments."""
    rng = random.Random(f"bench:{tag}")
    words = [rng.choice(WORDS) for _ in range(n_words)]
    sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, n_words, 12)]
    head = f"Episode {tag}. " if tag else ""
    return head + " ".join(sentences)


def text_for_tokens(tokenizer: Any, n_tokens: int, tag: str = "") -> str:
    """Filler whose own token count is close to (never above) `n_tokens`."""
    words = max(1, n_tokens)
    text = filler(words, tag)
    while words > 1 and len(tokenizer.encode(text, add_special_tokens=False)) > n_tokens:
        words = max(1, int(words * 0.9))
        text = filler(words, tag)
    return text


def image_png(tag: str = "", size: int = 224) -> bytes:
    """A PNG with a gradient background and a few coloured boxes placed by `tag`."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"img:{tag}")
    img = Image.new("RGB", (size, size))
    px = img.load()
    for y in range(size):
        for x in range(size):
            px[x, y] = (x * 255 // size, y * 255 // size, 128)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randrange(size - 40), rng.randrange(size - 40)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.rectangle([x0, y0, x0 + rng.randrange(16, 40), y0 + rng.randrange(16, 40)], colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    """A `data:image/png;base64,...` URL, as OpenAI image parts carry them."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def user_message(text: str, image_png_bytes: bytes | None = None) -> dict[str, Any]:
    """An OpenAI user message: the image part (if any) first, then the text."""
    if image_png_bytes is None:
        return {"role": "user", "content": text}
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(image_png_bytes)}},
            {"type": "text", "text": text},
        ],
    }


def no_eos_bias(eos_ids: tuple[int, ...]) -> dict[str, float]:
    """An OpenAI `logit_bias` that keeps greedy decoding from ever picking an EOS token,
    so every run generates exactly max_tokens."""
    return {str(i): -100.0 for i in eos_ids}
