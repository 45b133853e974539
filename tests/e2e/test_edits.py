"""Edits over the real server, on every transport: REST `/generate` (base64 PNG fields), OpenAI's
`/v1/images/edits` (multipart, through the official client) and gRPC; the kept region comes back exactly as
sent, and bad edit inputs are refused naming the field."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from server_process import API_KEY

from ditserve.client import ServerError

pytestmark = pytest.mark.e2e

SIDE = 8  # the e2e server's tiny DiT makes 8×8 grey images


def png(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def grey(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.int16)


INIT = png((np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 4) % 256)
RIGHT = np.zeros((SIDE, SIDE))
RIGHT[:, SIDE // 2 :] = 255
MASK = png(RIGHT)
"""Light on the right half: that half is generated, the left half kept."""


def test_an_inpainting_edit_keeps_the_unmasked_half_on_rest_and_grpc_alike(rest, grpc_client):
    fields = {"class_label": 3, "seed": 7, "steps": 4, "init_image": INIT, "mask": MASK}
    a = rest.generate(**fields)["images"][0]["data"]
    b = grpc_client.generate(**fields)["images"][0]["data"]
    assert a == b
    edited, init = grey(a), grey(INIT)
    assert np.array_equal(edited[:, : SIDE // 2], init[:, : SIDE // 2])  # exactly as sent
    assert np.abs(edited[:, SIDE // 2 :] - init[:, SIDE // 2 :]).mean() > 10  # regenerated


def test_img2img_at_strength_one_is_text_to_image_and_a_lower_strength_runs_fewer_steps(rest, grpc_client):
    plain = rest.generate(class_label=3, seed=7, steps=4, format="raw")
    full = rest.generate(class_label=3, seed=7, steps=4, format="raw", init_image=INIT, strength=1.0)
    assert full["images"][0]["data"] == plain["images"][0]["data"]
    half = grpc_client.generate(class_label=3, seed=7, steps=4, init_image=INIT, strength=0.5)
    assert half["stats"]["model_evaluations"] == 2 and half["stats"]["steps"] == 4


def test_the_openai_client_edits_an_image(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    alpha = np.full((SIDE, SIDE), 255)
    alpha[:, SIDE // 2 :] = 0  # OpenAI's rule: transparent where the image is edited
    mask = png(np.dstack([np.zeros((SIDE, SIDE))] * 3 + [alpha]), "RGBA")
    response = client.images.edit(
        model="tiny", image=("init.png", INIT), mask=("mask.png", mask), prompt="label3", n=2, size="8x8",
        response_format="b64_json", extra_body={"seed": 5, "steps": 3},
    )  # fmt: skip
    images = [grey(base64.b64decode(d.b64_json)) for d in response.data]
    assert len(images) == 2 and all(i.shape == (SIDE, SIDE) for i in images)
    for image in images:
        assert np.array_equal(image[:, : SIDE // 2], grey(INIT)[:, : SIDE // 2])
    with pytest.raises(openai.BadRequestError, match="mask"):  # no mask, no transparency, no strength
        client.images.edit(image=("init.png", INIT), prompt="label3")
    with pytest.raises(openai.BadRequestError, match="image"):
        client.images.edit(image=("init.png", INIT), mask=("mask.png", mask), prompt="label3", size="16x16")


BAD = [  # (edit fields, the field the error must name)
    ({"init_image": b"GIF89a not a png"}, "init_image"),
    ({"init_image": png(np.zeros((4, 4)))}, "init_image"),  # not the asked size (8x8 given below)
    ({"mask": MASK}, "mask"),
    ({"init_image": INIT, "mask": png(np.zeros((4, 4)))}, "mask"),
    ({"init_image": INIT, "strength": 0.0}, "strength"),
    ({"init_image": INIT, "strength": 1.5}, "strength"),
]


@pytest.mark.parametrize(("fields", "field"), BAD, ids=[f"{b[1]}{i}" for i, b in enumerate(BAD)])
def test_bad_edits_are_refused_on_both_transports_naming_the_field(rest, grpc_client, fields, field):
    request = {"class_label": 3, "steps": 4, "height": SIDE, "width": SIDE, **fields}
    with pytest.raises(ServerError) as http:
        rest.generate(**request)
    assert http.value.status == 400 and http.value.field == field, http.value
    with pytest.raises(ServerError) as rpc:
        grpc_client.generate(**request)
    assert rpc.value.status == "INVALID_ARGUMENT" and field in rpc.value.message


def post(server, path: str, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=30, **kwargs)


def test_malformed_edit_bodies_get_400_or_415_naming_the_problem(server):
    answer = post(server, "/generate", json={"class_label": 3, "init_image": "%%% not base64"})
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "init_image"
    files = {"image": ("init.png", INIT)}
    cases = [  # (form fields, files, what the error names)
        ({"prompt": "label3", "n": "two"}, files, "n"),
        ({"prompt": "label3", "image": "text, not a file"}, {"mask": ("m.png", MASK)}, "image"),
        ({"prompt": "label3", "strength": "0.5", "quality": "hd"}, files, "quality"),
        ({"prompt": "label3", "strength": "0.5", "response_format": "url"}, files, "response_format"),
        ({"prompt": "label3", "strength": "0.5"}, {"image": ("a.png", INIT), "mask": ("m.png", b"junk")}, "mask"),
    ]
    for data, parts, named in cases:
        answer = post(server, "/v1/images/edits", data=data, files=parts)
        assert answer.status_code == 400 and named in answer.text, answer.text
    answer = post(server, "/v1/images/edits", json={"prompt": "label3"})
    assert answer.status_code == 415 and "multipart/form-data" in answer.text
    two_images = [("image", ("a.png", INIT)), ("image", ("b.png", INIT))]
    twice = post(server, "/v1/images/edits", data={"prompt": "label3", "strength": "0.5"}, files=two_images)
    assert twice.status_code == 400 and "twice" in twice.text
    assert httpx.get(f"{server.url}/readyz").status_code == 200
