"""The digits-video Bento's model over a real server: a video asked for over REST (JSON and MP4/WebP/GIF files), gRPC
(GenerateVideo streams it frame by frame) and the OpenAI video routes; REST and gRPC give the same frames, and bad
requests (frames or sizes out of range, an image-only format or call, a video over the encoded-size bound) are
refused naming the field."""

from __future__ import annotations

import base64
import io
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageSequence
from server_process import API_KEY, start_server, stop_server
from test_playground import browser  # noqa: F401  (the fixture: one headless Chromium)

from ditserve.client import ServerError

pytestmark = pytest.mark.e2e

PROMPT = "a seven moving left"
STEPS = 4
FRAMES = 8
"""The model's default frame count (its checkpoint's)."""
COMPARED_STEPS = 24
"""Enough steps for FORA to reuse blocks (its default spacing, 0.06 of the schedule, is over a 12-step one)."""
MAX_FRAMES = 32
MAX_VIDEO_BYTES = 16 << 10
"""The server's encoded-video bound: above 8 frames of raw float32 16×16 pixels (8 KiB), below 32 frames' (32 KiB)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of its own over builtin:digits-video with the Bento's plan; conftest's `rest` and `grpc_client`
    talk to it."""
    model = "{name: digits-video, path: builtin:digits-video, family: wan, guidance_scale: 4.0, threads: 1}"
    plan = "{sampler: {name: flow-euler, steps: 24}}"
    current = start_server(
        tmp_path_factory.mktemp("video"),
        model=model,
        plan=plan,
        max_side=32,
        max_frames=MAX_FRAMES,
        pad_batches=False,
        env={"DITSERVE_MAX_VIDEO_BYTES": str(MAX_VIDEO_BYTES)},
    )
    yield current
    stop_server(current)


def raw_frames(data: bytes, frames: int) -> np.ndarray:
    return np.frombuffer(data, "<f4").reshape(frames, 1, 16, 16)


def test_rest_and_the_grpc_stream_give_the_same_frames(rest, grpc_client):
    ask = {"prompt": PROMPT, "seed": 3, "steps": STEPS, "num_images": 2, "format": "raw"}
    answer = rest.generate(**ask)
    assert [v["frames"] for v in answer["videos"]] == [FRAMES, FRAMES] and "images" not in answer
    events = list(grpc_client.video_events(**ask))
    kinds = [kind for kind, _ in events]
    assert kinds == ["progress"] * STEPS + ["frame"] * 2 * FRAMES + ["done"]  # progress, the frames, then the stats
    frames = [event for kind, event in events if kind == "frame"]
    assert [(f.video, f.index) for f in frames] == [(k, i) for k in range(2) for i in range(FRAMES)]
    done = events[-1][1]
    assert list(done.seeds) == [3, 4] and done.frames == FRAMES and done.stats.steps == STEPS
    assert done.stats.token_evaluations == answer["stats"]["token_evaluations"] > 0
    for k, video in enumerate(answer["videos"]):
        streamed = np.stack([raw_frames(f.image.data, 1)[0] for f in frames[k * FRAMES : (k + 1) * FRAMES]])
        assert np.array_equal(raw_frames(video["data"], FRAMES), streamed)


def test_video_files_hold_the_frames(rest):
    ask = {"prompt": PROMPT, "seed": 5, "steps": STEPS, "num_frames": 12}
    frames = raw_frames(rest.generate(**ask, format="raw")["videos"][0]["data"], 12)
    expected = np.rint(frames.clip(0, 1) * 255).astype(np.uint8)[:, 0]  # as a PNG of each frame rounds
    webp = Image.open(io.BytesIO(rest.file(**ask, format="webp", fps=4)))
    decoded = np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(webp)])
    assert webp.format == "WEBP" and webp.n_frames == 12 and webp.info["duration"] == 250  # 4 fps
    assert np.array_equal(decoded, expected)  # lossless
    gif = Image.open(io.BytesIO(rest.file(**ask, format="gif")))
    assert gif.format == "GIF" and 1 <= gif.n_frames <= 12  # Pillow merges identical consecutive frames
    assert np.array_equal(np.asarray(gif.convert("L")), expected[0])
    mp4 = rest.file(**ask, format="mp4")
    assert mp4[4:8] == b"ftyp"
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", "pipe:0", "-f", "rawvideo",
               "-pix_fmt", "gray", "pipe:1"]  # fmt: skip
    pixels = np.frombuffer(subprocess.run(command, input=mp4, capture_output=True, check=True).stdout, np.uint8)
    decoded = pixels.reshape(-1, 16, 16)
    assert decoded.shape[0] == 12
    assert np.abs(decoded.astype(int) - expected).mean() < 8  # H.264 at CRF 12: close, not exact


def test_the_openai_video_routes_create_retrieve_and_download(server):
    from openai import OpenAI

    client = OpenAI(api_key=API_KEY, base_url=f"{server.url}/v1", max_retries=0, timeout=120)
    created = client.videos.create(prompt=PROMPT, seconds="2", size="16x16", extra_body={"steps": STEPS, "seed": 1})
    assert created.status == "completed" and created.progress == 100 and created.seconds == "2"
    assert client.videos.retrieve(created.id).id == created.id
    mp4 = client.videos.download_content(created.id).read()
    assert mp4[4:8] == b"ftyp"
    with pytest.raises(Exception) as missing:
        client.videos.retrieve("video_nope")
    assert getattr(missing.value, "status_code", None) == 404


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"num_frames": MAX_FRAMES + 1}, "num_frames"),
        ({"num_frames": 0}, "num_frames"),
        ({"height": 48}, "height"),
        ({"width": 15}, "width"),
    ],
)
def test_frames_and_sizes_out_of_range_are_refused_naming_the_field(server, rest, grpc_client, fields, field):
    blocks = server.metric("ditserve_engine_block_evaluations")
    with pytest.raises(ServerError) as http:
        rest.generate(prompt=PROMPT, steps=STEPS, **fields)
    assert http.value.status == 400 and http.value.field == field
    with pytest.raises(ServerError) as rpc:
        grpc_client.video(prompt=PROMPT, steps=STEPS, **fields)
    assert rpc.value.status == "INVALID_ARGUMENT" and field in rpc.value.message
    assert server.metric("ditserve_engine_block_evaluations") == blocks  # refused before any model work


def test_image_formats_and_calls_and_oversized_videos_are_refused(server, rest, grpc_client):
    with pytest.raises(ServerError) as png:
        rest.file(prompt=PROMPT, steps=STEPS, format="png")
    assert png.value.status == 400 and png.value.field == "format"
    with pytest.raises(ServerError) as two:
        rest.file(prompt=PROMPT, steps=STEPS, format="mp4", num_images=2)
    assert two.value.status == 400 and two.value.field == "format"
    with pytest.raises(ServerError) as image_call:
        grpc_client.generate(prompt=PROMPT, steps=STEPS)
    assert image_call.value.status == "INVALID_ARGUMENT" and "GenerateVideo" in image_call.value.message
    with pytest.raises(ServerError) as large:
        rest.generate(prompt=PROMPT, steps=1, num_frames=MAX_FRAMES, format="raw")
    assert (
        large.value.status == 400
        and large.value.field == "num_frames"
        and "DITSERVE_MAX_VIDEO_BYTES" in (large.value.message)
    )
    from openai import BadRequestError, OpenAI

    client = OpenAI(api_key=API_KEY, base_url=f"{server.url}/v1", max_retries=0, timeout=60)
    with pytest.raises(BadRequestError, match="num_frames"):
        client.videos.create(prompt=PROMPT, seconds="5", extra_body={"steps": STEPS})  # 40 frames at 8 fps


def webp_frames(b64: str) -> np.ndarray:
    """Every frame of a base64 animated WebP, (frames, H, W, 3) bytes."""
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def test_the_playground_plays_the_video_and_compares_two_plans_frame_by_frame(server, rest, browser):  # noqa: F811
    """The page offers frames within the model's bounds and no edits, shows each video as an animated WebP (what
    /generate answers to the same request), and its PSNR between two plans is Python's over every frame."""
    from selenium.webdriver.common.by import By
    from test_playground import choose, field, generate, open_page, shown, type_into

    page = open_page(browser, server, "digits-video (wan, text-conditioned")
    frames = field(page, "frames")
    assert [frames.get_attribute(a) for a in ("min", "max")] + [frames.get_property("value")] == ["1", "32", "8"]
    assert not field(page, "edit-fieldset").is_displayed()
    field(page, "mode-compare").click()
    for id_, value in {
        "prompt": PROMPT,
        "steps": COMPARED_STEPS,
        "frames": 10,
        "num-images": 1,
        "seed": 2,
        "preview": 0,
    }.items():
        type_into(page, id_, value)
    choose(page, "cache-a", "none")
    choose(page, "cache-b", "fora")
    generate(page)
    assert field(page, "error").text == ""
    sources = [img.get_attribute("src") for img in page.find_elements(By.CSS_SELECTOR, "#run-a .grid img")]
    assert len(sources) == 1 and sources[0].startswith("data:image/webp;base64,")
    ask = {"prompt": PROMPT, "steps": COMPARED_STEPS, "num_frames": 10, "seed": 2, "height": 16, "width": 16}
    same = rest.generate(**ask, cache={"name": "none"})["videos"][0]["data"]
    assert shown(page, "a") == [base64.b64encode(same).decode()]
    a, b = (webp_frames(shown(page, run)[0]).astype(float) for run in "ab")
    assert a.shape == (10, 16, 16, 3)
    expected = 10 * np.log10(255**2 / ((a - b) ** 2).mean())
    shown_db = float(field(page, "psnr").text.removesuffix(" dB"))
    assert abs(shown_db - expected) < 0.01 and 10 < expected < 100  # the same sums, in doubles


def test_videos_of_different_lengths_never_share_a_model_call(rest):
    """Continuous batching joins a request to the running batch only when its videos have the batch's shape: two
    requests of 8 and 12 frames submitted together both finish, each with its own frames."""
    ids = [rest.submit(prompt=PROMPT, seed=k, steps=12, num_frames=frames) for k, frames in enumerate((8, 12))]
    results = [poll_result(rest, task) for task in ids]
    assert [r["videos"][0]["frames"] for r in results] == [8, 12]


def poll_result(rest, task: str) -> dict:
    import time

    deadline = time.monotonic() + 120
    while (result := rest.result(task)) is None:
        assert time.monotonic() < deadline, rest.task(task)
        time.sleep(0.05)
    return result
