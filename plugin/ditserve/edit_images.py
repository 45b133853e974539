"""The images of an edit request: PNG bytes read with bounded work into pixels and a mask. No torch.

Every transport hands the engine raw PNG bytes (`GenerationRequest.init_image`, `.mask`); `Front.validate`
reads them here, so REST, gRPC, the OpenAI route and Python callers get the same checks and the same
`RequestError` naming the field. The work is bounded before anything is decompressed: the chunk list is
walked and the size read from the header first, an image larger than the model's `max_side` is refused
there, and only the chunks that make the pixels (IHDR, PLTE, tRNS, IDAT, IEND) reach the decoder — text and
ICC chunks, which Pillow would inflate while opening (up to 64 MB of text), are dropped unread. The pixel
data then inflates to exactly height × width × channels bytes.

Mask convention: where the mask is transparent (alpha 0, as OpenAI's edit route defines it) — or, for a mask
without transparency, where it is light (grey level ≥ 128, diffusers' white-is-repainted) — the image is
generated; elsewhere it is kept.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from ditserve.errors import RequestError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})
"""The chunks that define the pixels; every other chunk is dropped before decoding."""
MODES = {1: "L", 3: "RGB"}
"""The model's image channels → the Pillow mode an init image is converted to."""


def png_size(data: bytes, field: str) -> tuple[int, int]:
    """(height, width) from the PNG header, without decoding anything."""
    return _parse(data, field)[0]


def has_alpha(data: bytes, field: str) -> bool:
    """Whether the PNG carries transparency (an alpha channel or a tRNS chunk), from its chunk list."""
    _, color_type, chunks = _parse(data, field)
    return color_type in (4, 6) or any(kind == b"tRNS" for kind, _, _ in chunks)


def read_image(data: bytes, field: str, channels: int, max_side: int) -> np.ndarray:
    """An init image as (channels, H, W) float32 in [0, 1]; transparency is dropped (composited on nothing)."""
    if channels not in MODES:
        raise RequestError(field, f"this model's images have {channels} channels; edits take 1 (grey) or 3 (RGB)")
    image = _open(data, field, max_side)
    pixels = np.asarray(image.convert(MODES[channels]), dtype=np.float32) / 255.0
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels).transpose(2, 0, 1).copy()


def read_mask(data: bytes, field: str, max_side: int) -> np.ndarray:
    """A mask as (1, H, W) float32, 1 where the image is generated and 0 where it is kept (module docstring)."""
    transparent = has_alpha(data, field)
    image = _open(data, field, max_side)
    alpha_or_grey = np.asarray(image.convert("RGBA"))[:, :, 3] if transparent else np.asarray(image.convert("L"))
    generate = alpha_or_grey == 0 if transparent else alpha_or_grey >= 128
    return generate.astype(np.float32)[None]


def _open(data: bytes, field: str, max_side: int):
    """The decoded PNG (pixel chunks only), after its size was checked against `max_side`."""
    from PIL import Image

    (height, width), _, chunks = _parse(data, field)
    if height > max_side or width > max_side:
        raise RequestError(field, f"is {width}x{height} pixels; this model makes images of at most {max_side} a side")
    stripped = SIGNATURE + b"".join(struct.pack(">I", len(body)) + kind + body + crc for kind, body, crc in chunks)
    try:
        image = Image.open(io.BytesIO(stripped), formats=["PNG"])
        image.load()
    except Exception as err:  # truncated data, bad CRCs, a corrupt stream: whatever Pillow refuses
        raise RequestError(field, f"is not a decodable PNG ({err})") from None
    return image


def _parse(data: bytes, field: str):
    """Size, colour type and pixel chunks of a PNG, from a walk over its chunk list (nothing inflated)."""
    if not isinstance(data, bytes | bytearray) or not data.startswith(SIGNATURE):
        raise RequestError(field, "must be a PNG image (its bytes do not start with the PNG signature)")
    chunks, offset, header = [], len(SIGNATURE), None
    while offset < len(data):
        if offset + 8 > len(data):
            raise RequestError(field, "is not a decodable PNG (a chunk header is cut off)")
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        end = offset + 12 + length
        if end > len(data):
            raise RequestError(field, f"is not a decodable PNG (chunk {kind!r} is cut off)")
        body, crc = data[offset + 8 : end - 4], data[end - 4 : end]
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise RequestError(field, "is not a decodable PNG (it does not start with an IHDR chunk)")
            if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
                raise RequestError(field, "is not a decodable PNG (its header chunk fails its checksum)")
            header = struct.unpack(">IIBB", body[:10])
        if kind in PIXEL_CHUNKS:
            chunks.append((kind, body, crc))
        offset = end
        if kind == b"IEND":
            break
    if header is None:
        raise RequestError(field, "is not a decodable PNG (no IHDR chunk)")
    width, height, _, color_type = header
    if width == 0 or height == 0:
        raise RequestError(field, "is not a decodable PNG (zero width or height)")
    return (height, width), color_type, chunks
