"""The `ditserve` command and the cost of `import ditserve`, each in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_import_is_cheap_and_touches_no_torch():
    code = (
        "import time, sys; t = time.perf_counter(); import ditserve; d = time.perf_counter() - t; "
        "print(d, 'torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    seconds, torch_loaded, diffusers_loaded = run("-c", code).stdout.split()
    assert float(seconds) < 2.0
    assert torch_loaded == diffusers_loaded == "False"


def test_strategies_lists_every_registry_with_fields():
    out = run("-m", "ditserve.cli", "strategies", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert set(listing) == {"cache", "sampler", "quant", "parallel"}
    ddim = listing["sampler"]["ddim"]
    assert ddim["about"].startswith("DDIM") and ddim["fields"]["eta"]["default"] == 0.0
    assert "Noise re-injected" in ddim["fields"]["eta"]["doc"]


def test_generate_writes_pngs_and_reports_stats(tmp_path, tiny_dit_dir):
    config = tmp_path / "model.yaml"
    config.write_text(f"model: {{name: tiny, path: {tiny_dit_dir}}}\nplan: {{sampler: {{name: ddim, steps: 3}}}}\n")
    out = run(
        "-m", "ditserve.cli", "generate", "--config", str(config), "--prompt", "label7",
        "--seed", "4", "--num-images", "2", "--upscale", "2", "-o", str(tmp_path / "x.png"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["seeds"] == [4, 5] and summary["steps"] == 3
    assert summary["block_evaluations"] == summary["block_evaluations_full"] == 3 * 2
    for path in summary["images"]:
        assert Image.open(path).size == (16, 16)
    assert "3/3" in out.stderr  # the progress bar reached the last step


def test_generate_writes_a_video_models_videos_as_files(tmp_path):
    out = run(
        "-m", "ditserve.cli", "generate", "--config", "builtin:digits-video", "--prompt", "a seven moving left",
        "--steps", "2", "--seed", "1", "--num-frames", "4", "--upscale", "2", "-q", "-o", str(tmp_path / "v.png"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (path,) = json.loads(out.stdout)["videos"]
    assert path == str(tmp_path / "v.webp")  # an image's suffix becomes the video format's
    with Image.open(path) as video:
        assert video.n_frames == 4 and video.size == (32, 32)


def test_generate_refuses_bad_input_with_a_message_and_status_2(tmp_path):
    out = run("-m", "ditserve.cli", "generate", "--prompt", "giraffe", "-o", str(tmp_path / "x.png"))
    assert out.returncode == 2
    assert "prompt: 'giraffe' names no class" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_checks_the_config_before_starting_a_server(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: x, path: builtin:digits-dit}\nlimits: {max_steps: 0}\n")
    out = run("-m", "ditserve.cli", "serve", "--config", str(bad), "--port", "1")
    assert out.returncode == 2
    assert "limits.max_steps" in out.stderr and "Traceback" not in out.stderr
    assert "serving" not in out.stdout  # refused before anything listened
