"""Image decoding shared by training, review and prediction (no torch import)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully: EXIF orientation applied; grayscale, palette, alpha and
    16-bit / float images converted to 8-bit RGB. Raises one of ``DECODE_ERRORS`` on a
    missing, truncated or corrupt file."""
    with Image.open(path) as im:
        im.load()  # force the full decode so that truncated files fail here
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
            im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        elif im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA"):
            # composite on black, like most training pipelines do implicitly
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, im)
        return im.convert("RGB")
