"""What one request to the web app may hold, and an upload's bytes to an RGB image or a 4xx.

The limits are stated to the user in the error messages and in docs/results/serving.md:
a phone photo (12-50 megapixels, 3-15 MB as JPEG) fits; a decompression bomb does not.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = MAX_PIXELS


def decode_image(data: bytes, limits: Limits = Limits()) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an uploaded image file, turned upright by its EXIF orientation.

    Raises RequestError: 400 for an empty body or bytes that are no readable image,
    413 for more bytes or pixels than the limits allow.
    """
    if not data:
        raise RequestError(400, "empty request: send one image file (multipart field 'file' or the raw body)")
    if len(data) > limits.max_bytes:
        raise RequestError(413, f"file too large: {len(data)} bytes, at most {limits.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if width * height > limits.max_pixels:
                raise RequestError(413, f"image too large: {width} x {height} pixels, "
                                        f"at most {limits.max_pixels} pixels")
            image.load()
            upright = ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"))
    except UnidentifiedImageError:
        raise RequestError(400, "not an image: the bytes are no format Pillow reads (JPEG, PNG, WebP, ...)") from None
    except Image.DecompressionBombError as err:
        raise RequestError(413, f"image too large to decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise RequestError(400, f"corrupt or truncated image: {err}") from None
