"""Video-Infinity on real gloo process groups of 2 ranks against its single-process equivalent.

A seeded random tiny Wan transformer with digits-video's frames runs one call on a 16-frame video with a
timestep per token (as the diffusion-forcing model takes them): on 2 spawned ranks, one 8-frame clip each, and
in one process with the same dual-scope pattern, clip by clip (itself checked against the layout's frame mask).
The ranks must match it within 1e-4, send exactly the bytes of the docstring's formula, and give their clip's
tokens their frame positions in the video. End to end, the registered runner serves the shipped digits-video
through the multi-process executor as the single-process equivalent does in one engine.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
import yaml

from ditserve import config as config_module
from ditserve.config import parse_config
from ditserve.errors import PlanError, RequestError
from ditserve.parallel.video_infinity import (
    CallLayout,
    ClipByClipAttention,
    ClipLayout,
    VideoInfinityConfig,
    apply_single_process_equivalent,
    remove_video_infinity,
)
from ditserve.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, CLIPS = 16, 2
CONFIG = VideoInfinityConfig(boundary_frames=2, global_frames=2)


SHAPE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=1, out_channels=1,
             text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)  # fmt: skip
"""A tiny Wan of digits-video's layout (pixel frames of 16×16, 64 tokens a frame), 2 blocks of width 24."""


def random_transformer():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(**SHAPE).eval()


def call_inputs() -> dict:
    """A 16-frame video, a prompt embedding and per-token timesteps (a different level per frame)."""
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 1, FRAMES, 16, 16, generator=g),
        "timestep": (torch.rand(1, FRAMES, generator=g) * 1000).repeat_interleave(64, dim=1),
        "encoder_hidden_states": torch.randn(1, 8, 16, generator=g),
        "return_dict": False,
    }


def rank_main(rank: int, rendezvous: str, out_dir: str) -> None:
    """One rank: its clip of the call through Video-Infinity, the bytes it sent, its clip's rotary embedding."""
    import torch.distributed as dist

    from ditserve.parallel.comm import Comm
    from ditserve.parallel.groups import Group, init_loopback
    from ditserve.parallel.video_infinity import apply_video_infinity

    torch.set_num_threads(1)
    init_loopback(rank, CLIPS, rendezvous, timeout_s=300)
    transformer, comm = random_transformer(), Comm()
    apply_video_infinity(transformer, CONFIG, Group(list(range(CLIPS)), dist.group.WORLD, rank), comm)
    positions = []
    transformer.rope.register_forward_hook(lambda _module, _args, out: positions.append(out[0]))
    with torch.no_grad():
        out = transformer(**call_inputs())[0]
    torch.save({"out": out, "bytes": comm.bytes_sent, "rope_cos": positions[0]}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def single_process() -> dict:
    """The call with full attention, with the dual-scope pattern, and after removing it; the whole video's
    rotary embedding."""
    transformer = random_transformer()
    with torch.no_grad():
        full = transformer(**call_inputs())[0]
        apply_single_process_equivalent(transformer, CONFIG, CLIPS)
        dual_scope = transformer(**call_inputs())[0]
        remove_video_infinity(transformer)
        again = transformer(**call_inputs())[0]
        rope_cos = transformer.rope(call_inputs()["hidden_states"])[0]
    return {"full": full, "dual_scope": dual_scope, "again": again, "rope_cos": rope_cos}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> tuple[list[dict], dict]:
    """Each rank's record and the single-process one (computed while the ranks start)."""
    root = tmp_path_factory.mktemp("video-infinity")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=rank_main, args=(r, str(root / "rendezvous"), str(root))) for r in range(CLIPS)]
    for process in processes:
        process.start()
    single = single_process()
    for process in processes:
        process.join(timeout=600)
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in processes] == [0] * CLIPS
    return [torch.load(root / f"rank{r}.pt") for r in range(CLIPS)], single


def test_the_ranks_equal_the_single_process_dual_scope_attention(outcomes):
    ranks, single_process = outcomes
    for rank in ranks:
        assert (rank["out"] - single_process["dual_scope"]).abs().max().item() <= 1e-4
    # the pattern is not full attention: ten times the tolerance apart (a vacuous test would pass with any context)
    assert (single_process["dual_scope"] - single_process["full"]).abs().max().item() > 1e-3


def test_each_clip_gets_its_frame_positions_in_the_whole_video(outcomes):
    ranks, single_process = outcomes
    tokens = FRAMES // CLIPS * 64
    for r, rank in enumerate(ranks):
        assert torch.equal(rank["rope_cos"], single_process["rope_cos"][:, r * tokens : (r + 1) * tokens])


def test_bytes_sent_equal_the_analytical_count(outcomes):
    ranks, _ = outcomes
    layout = ClipLayout(CLIPS, FRAMES // CLIPS, CONFIG)
    for r, rank in enumerate(ranks):
        expected = layout.bytes_per_call(r, batch=1, width=24, tokens_per_frame=64, layers=2, output_per_frame=256)
        assert rank["bytes"] == expected


def test_the_processor_is_wans_own_when_every_frame_is_visible_and_comes_off_cleanly(outcomes):
    _, single_process = outcomes
    transformer = random_transformer()
    everything = VideoInfinityConfig(boundary_frames=FRAMES // CLIPS, global_frames=0)
    with torch.no_grad():
        apply_single_process_equivalent(transformer, everything, CLIPS)
        out = transformer(**call_inputs())[0]
    assert (out - single_process["full"]).abs().max().item() <= 1e-5
    assert torch.equal(single_process["again"], single_process["full"])


def test_the_single_process_equivalent_is_attention_under_the_layouts_frame_mask():
    call = CallLayout(4, VideoInfinityConfig(boundary_frames=1, global_frames=2))
    call.start(torch.empty(1, 1, 16, 4, 4), (1, 2, 2))  # 4 clips of 4 frames, 4 tokens a frame
    q, k, v = torch.randn(3, 1, 2, 64, 8).unbind(0)
    mask = call.layout.frame_mask().repeat_interleave(4, dim=0).repeat_interleave(4, dim=1)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (ClipByClipAttention(call)(q, k, v) - expected).abs().max().item() <= 1e-6


def test_the_layout_sees_its_clip_its_neighbours_boundary_and_the_global_frames():
    layout = ClipLayout(4, 8, VideoInfinityConfig(boundary_frames=1, global_frames=2))
    assert layout.global_frames() == [2, 6, 10, 14, 18, 22, 26, 30]
    assert list(layout.local_frames(0)) == list(range(0, 9))
    assert list(layout.local_frames(2)) == list(range(15, 25))
    visible = layout.frame_mask()[16].nonzero().flatten().tolist()
    assert visible == [2, 6, 10, 14, *range(15, 25), 26, 30]
    with pytest.raises(ValueError, match="at most 8 of each"):
        ClipLayout(4, 8, VideoInfinityConfig(boundary_frames=9))


VIDEO = GenerationRequest(prompt="a seven moving left", num_frames=16, steps=2, seed=3)
"""Two of digits-video's trained 8-frame clips, two steps."""


def shipped(name: str, parallel: dict):
    """The shipped config `name` with `plan.parallel` replaced (ranks may take minutes to start on a loaded machine)."""
    data = yaml.safe_load((Path(config_module.__file__).parent / "configs" / f"{name}.yaml").read_text())
    data["plan"]["parallel"] = parallel if parallel["name"] == "none" else {"start_timeout_s": 900.0, **parallel}
    return parse_config(data)


def test_the_registered_runner_serves_digits_video_as_the_single_process_equivalent():
    """2 ranks through the executor against one engine with `apply_single_process_equivalent`; a frame count the
    clips cannot split is refused before the ranks see it."""
    from ditserve.engine import Engine
    from ditserve.parallel.executor import RankExecutor, open_executor

    runner = {"name": "video-infinity", "clips": 2, "boundary_frames": 2, "global_frames": 2}
    executor = open_executor(shipped("digits-video", runner))
    try:
        assert isinstance(executor, RankExecutor)
        engine = Engine(shipped("digits-video", {"name": "none"}))
        plain = engine.generate(VIDEO).videos
        apply_single_process_equivalent(engine.model.transformer, CONFIG, CLIPS)
        expected = engine.generate(VIDEO).videos
        with pytest.raises(RequestError, match="cannot split") as refused:
            executor.validate(VIDEO.model_copy(update={"num_frames": 15}))
        assert refused.value.field == "num_frames"
        videos = executor.generate(VIDEO).videos
    finally:
        executor.close()
    assert videos.shape == expected.shape == (1, 16, 1, 16, 16)
    assert (videos - expected).abs().max().item() <= 1e-4
    assert (plain - expected).abs().max().item() > 1e-3  # the clips' context is not the whole video's


def test_the_runner_refuses_a_model_that_is_not_wan_at_load():
    from ditserve.parallel.executor import open_executor

    with pytest.raises(PlanError, match="not family 'dit'"):
        open_executor(shipped("digits-dit", {"name": "video-infinity", "clips": 2}))
