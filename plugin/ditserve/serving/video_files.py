"""Video files of generated frames: animated WebP and GIF through Pillow, MP4 (H.264) through ffmpeg.

Pillow is already a dependency and writes animated WebP (here lossless: the frames' bytes exactly, as PNG keeps an
image's) and GIF (a palette of 256 colours: exact for grey frames, quantised for colour; Pillow merges identical
consecutive frames into one longer one). MP4 needs an H.264 encoder, which Pillow lacks: `imageio-ffmpeg` ships
a static ffmpeg binary in its wheel (no system package, nothing fetched at run time), and we run that binary
directly, raw RGB frames in on stdin and a fragmented MP4 out on stdout (fragmented: written without seeking
back, so no temporary file; browsers and players read it as any MP4). imageio itself is not needed for that.
H.264 in yuv420p is lossy (CRF 12, near transparent) and wants an even height and width, which every video
model's size rule gives (pixel-space Wan: multiples of 2).

The frames' pixels are those of a PNG of the same image (`png.to_uint8`). Every file is bounded: an encoding
larger than `max_bytes` is refused, naming `num_frames`.
"""

from __future__ import annotations

import io
import subprocess
from typing import TYPE_CHECKING, Literal

import numpy as np

from ditserve.errors import RequestError
from ditserve.serving import png

if TYPE_CHECKING:
    import torch

VideoFormat = Literal["mp4", "webp", "gif"]
MIME_TYPES: dict[str, str] = {"mp4": "video/mp4", "webp": "image/webp", "gif": "image/gif"}
MP4_CRF = 12
"""x264's constant rate factor: 0 is lossless, 18 "visually lossless", 23 its default."""
FFMPEG_TIMEOUT_S = 60


def frames_uint8(video: torch.Tensor) -> np.ndarray:
    """(frames, C, H, W) floats in [0, 1] → (frames, H, W, C) bytes, each frame rounded as its PNG's."""
    return np.stack([png.to_uint8(frame) for frame in video])


def encode(video: torch.Tensor, fmt: VideoFormat, fps: int, max_bytes: int) -> bytes:
    """One video, (frames, C, H, W) in [0, 1] with C 1 (grey) or 3 (RGB), as an MP4, WebP or GIF file playing at
    `fps` frames per second and looping (WebP, GIF)."""
    frames = frames_uint8(video)
    return bounded(_mp4(frames, fps) if fmt == "mp4" else _pillow(frames, fmt, fps), fmt, max_bytes)


def bounded(data: bytes, fmt: str, max_bytes: int) -> bytes:
    """`data`, unless it is over `max_bytes`: then refused, naming the field that makes a video large."""
    if len(data) > max_bytes:
        raise RequestError(
            "num_frames",
            f"the {fmt} video is {len(data)} bytes, over this server's {max_bytes} (DITSERVE_MAX_VIDEO_BYTES); "
            "ask for fewer frames or a smaller size",
        )
    return data


def _pillow(frames: np.ndarray, fmt: str, fps: int) -> bytes:
    from PIL import Image

    grey = frames.shape[-1] == 1
    images = [Image.fromarray(frame[..., 0] if grey else frame) for frame in frames]
    if fmt == "webp" and grey:  # WebP stores RGB: grey frames become three equal channels
        images = [image.convert("RGB") for image in images]
    options = {"lossless": True, "quality": 100, "method": 4} if fmt == "webp" else {"optimize": False}
    out = io.BytesIO()
    images[0].save(
        out, fmt.upper(), save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, **options
    )
    return out.getvalue()


def _mp4(frames: np.ndarray, fps: int) -> bytes:
    import imageio_ffmpeg

    _, height, width, channels = frames.shape
    rgb = np.repeat(frames, 3, axis=-1) if channels == 1 else frames
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"),
        *("-r", str(fps), "-i", "pipe:0", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(MP4_CRF)),
        *("-movflags", "frag_keyframe+empty_moov", "-f", "mp4", "pipe:1"),
    ]
    done = subprocess.run(command, input=np.ascontiguousarray(rgb).tobytes(), capture_output=True,
                          timeout=FFMPEG_TIMEOUT_S)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not encode the video: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
