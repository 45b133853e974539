"""The OpenAI routes' bodies carry ditserve's extra fields into the request: the cross-request cache's opt-out
(`approx_cache`) in JSON and in the edits route's multipart form, where a boolean is written `true` or `false`."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ditserve.errors import RequestError
from ditserve.serving.openai import EditsBody, ImagesBody, edit_request, to_request
from ditserve.serving.parsing import from_form


def png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, format="PNG")
    return out.getvalue()


def test_the_opt_out_reaches_the_request_from_json_and_from_a_form():
    assert to_request(ImagesBody(prompt="7", approx_cache=False)).approx_cache is False
    assert to_request(ImagesBody(prompt="7")).approx_cache is True
    form = [("prompt", "7"), ("image", png()), ("strength", "0.5"), ("approx_cache", "false")]
    body = from_form(form, EditsBody)
    assert body.approx_cache is False and edit_request(body).approx_cache is False


def test_a_form_boolean_other_than_true_or_false_is_refused_naming_the_field():
    with pytest.raises(RequestError) as refused:
        from_form([("prompt", "7"), ("image", png()), ("approx_cache", "no")], EditsBody)
    assert refused.value.field == "approx_cache" and "true or false" in str(refused.value)
