"""Video-Infinity (Tan et al., 2024, "Video-Infinity: Distributed Long Video Generation") for the Wan family:
a video longer than the model was trained on, cut into clips, one clip per rank.

Clip parallelism: rank r of N holds frames [r·F, (r+1)·F) of an N·F-frame video and runs the whole transformer
on them every step; the transformer's input is cut to the clip and its output gathered (all ranks then hold
the whole video for the sampler, as under the sequence-parallel runners). Only self-attention mixes frames,
and there each rank widens its keys/values by two kinds of context, exchanged every call:

- local context: the keys/values of the `boundary_frames` nearest frames of each neighbouring clip (rank r−1's
  last, rank r+1's first), sent point to point between neighbours;
- global context: the keys/values of `global_frames` frames of every clip (evenly spaced, the centres of equal
  slices), all-gathered, so every clip sees the whole video at a small fixed cost.

How this adapts the paper: VideoCrafter2, the paper's model, has separate temporal attention (each pixel
attends over frames) whose local scope is a sliding window, plus temporal convolutions and group norms that
need their own exchanges (3 communications per layer there). Wan has full 3D attention over all tokens of all
frames, per-token norms and a patch embedding one frame deep, so attention is the only place frames meet:
each query of clip r attends, in one softmax, over the union of its own clip's tokens, the boundary frames'
tokens and the global frames' tokens (a global frame already in the local scope is not counted twice). That is
2 communications per self-attention (boundary exchange, global all-gather) plus 1 output gather per transformer
call. The paper's timestep-dependent bias between the local and global scopes (a VideoCrafter tuning) is not
taken over.

Positions: Wan's rotary embedding reads the frame index from the token grid it is given, so a rank's clip would
start at frame 0; a hook on `rope` gives each rank's tokens their positions in the whole video, and the keys it
sends are rotated before they leave, so boundary and global keys carry their own positions.

Each rank installs it on its transformer with `apply_video_infinity` (benchmarks/video_infinity.py runs
WanPipeline that way). As a runner, `plan.parallel: {name: video-infinity, clips: N}` puts one clip on each of
N ranks of the multi-process executor (the clips are the ring axis of the layout; cfg and dp compose with it);
a request whose latent frames N clips cannot split equally is refused before the ranks see it.

The single-process equivalent (`apply_single_process_equivalent`) computes the same attention over the whole video
in one process, clip by clip with the keys a rank would gather; `ClipLayout.frame_mask` states the pattern as a
frame-level mask on ordinary attention (the tests check that the two agree). On fp32 the ranks match the single
process to float rounding.

Bytes each rank sends per transformer call (element size e, batch b, attention width W = heads × head dim,
T tokens per frame, L self-attentions, n(r) ∈ {1, 2} neighbours, B = boundary_frames, G = global_frames,
output of C channels and P pixels per frame):
    L · (n(r) · 2bBTW + (N−1) · 2bGTW) · e  +  (N−1) · bCFP · e
(keys and values travel together; the all-gathers are counted as Comm counts them, n·(N−1) for n local bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook
from pydantic import BaseModel, ConfigDict, Field

from ditserve.errors import PlanError, RequestError
from ditserve.hooks import add_hook, remove_hook
from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.parallel.groups import Degrees
from ditserve.registry import PARALLEL

CLIP_HOOK = "ditserve.video_infinity_clip"
"""The name of the hook that cuts a transformer call to this rank's clip and gathers the clips' outputs."""
POSITIONS_HOOK = "ditserve.video_infinity_positions"
"""The name of the hook that gives a clip's tokens their frame positions in the whole video."""


class VideoInfinityConfig(BaseModel):
    """How much context each clip's self-attention sees besides its own frames."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    boundary_frames: int = Field(1, ge=0, le=64)
    """Frames of each neighbouring clip (the nearest ones) whose keys/values a clip attends to: local context."""
    global_frames: int = Field(1, ge=0, le=64)
    """Frames of every clip, evenly spaced, whose keys/values every clip attends to: global context."""


@dataclass(frozen=True)
class ClipLayout:
    """Which frames each clip's queries see, for a video of `clips` × `clip_frames` frames."""

    clips: int
    clip_frames: int
    config: VideoInfinityConfig

    def __post_init__(self) -> None:
        if self.config.boundary_frames > self.clip_frames or self.config.global_frames > self.clip_frames:
            raise ValueError(
                f"clips of {self.clip_frames} frames cannot lend {self.config.boundary_frames} boundary or "
                f"{self.config.global_frames} global frames each; ask for at most {self.clip_frames} of each"
            )

    @property
    def frames(self) -> int:
        return self.clips * self.clip_frames

    @property
    def global_offsets(self) -> list[int]:
        """The global frames' places inside every clip: the centres of `global_frames` equal slices."""
        g = self.config.global_frames
        return [(2 * i + 1) * self.clip_frames // (2 * g) for i in range(g)]

    def global_frames(self) -> list[int]:
        """Every clip's global frames, clip by clip (the order of the all-gather)."""
        return [clip * self.clip_frames + offset for clip in range(self.clips) for offset in self.global_offsets]

    def local_frames(self, clip: int) -> range:
        """The clip's own frames and its neighbours' boundary frames."""
        b = self.config.boundary_frames
        return range(max(0, clip * self.clip_frames - b), min(self.frames, (clip + 1) * self.clip_frames + b))

    def distant_global(self, clip: int) -> list[int]:
        """Indices into `global_frames()` of the global frames outside the clip's local scope (the others are
        already there and count once)."""
        local = self.local_frames(clip)
        return [i for i, frame in enumerate(self.global_frames()) if frame not in local]

    def frame_mask(self) -> torch.Tensor:
        """(frames, frames) bool: query frame i may attend to key frame j."""
        mask = torch.zeros(self.frames, self.frames, dtype=torch.bool)
        for clip in range(self.clips):
            rows = slice(clip * self.clip_frames, (clip + 1) * self.clip_frames)
            mask[rows, list(self.local_frames(clip))] = True
            mask[rows, self.global_frames()] = True
        return mask

    def bytes_per_call(self, rank: int, *, batch: int, width: int, tokens_per_frame: int, layers: int,
                       output_per_frame: int, element_size: int = 4) -> int:  # fmt: skip
        """What rank `rank` sends in one transformer call (the formula of the module docstring)."""
        neighbours = (rank > 0) + (rank < self.clips - 1)
        frame_kv = 2 * batch * tokens_per_frame * width
        per_layer = neighbours * self.config.boundary_frames * frame_kv
        per_layer += (self.clips - 1) * self.config.global_frames * frame_kv
        output = (self.clips - 1) * batch * self.clip_frames * output_per_frame
        return (layers * per_layer + output) * element_size


class CallLayout:
    """The layout of the transformer call in progress, shared by a rank's hooks and processors."""

    def __init__(self, clips: int, config: VideoInfinityConfig) -> None:
        self.clips, self.config = clips, config
        self.layout: ClipLayout | None = None
        self.tokens_per_frame = 0

    def start(self, hidden_states: torch.Tensor, patch_size: tuple[int, int, int]) -> None:
        """Record the layout of a call on `hidden_states` (batch, channels, frames, height, width)."""
        frames = hidden_states.shape[2] // patch_size[0]
        if frames % self.clips:
            raise ValueError(f"a video of {frames} latent frames cannot be cut into {self.clips} equal clips")
        self.layout = ClipLayout(self.clips, frames // self.clips, self.config)
        self.tokens_per_frame = (hidden_states.shape[3] // patch_size[1]) * (hidden_states.shape[4] // patch_size[2])


def _hidden_states(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class ClipHook(ModelHook):
    """On the transformer: records the call's layout; with a group, runs this rank's clip (frames and per-token
    timesteps cut) and gathers every clip's output along the frames."""

    def __init__(self, call: CallLayout, group=None, comm=None) -> None:
        super().__init__()
        self.call, self.group, self.comm = call, group, comm

    def pre_forward(self, module, *args, **kwargs):
        x = _hidden_states(args, kwargs)
        self.call.start(x, module.config.patch_size)
        if self.group is None:
            return args, kwargs
        layout, rank = self.call.layout, self.group.rank
        p_t = module.config.patch_size[0]
        frames = slice(rank * layout.clip_frames * p_t, (rank + 1) * layout.clip_frames * p_t)
        tokens = layout.clip_frames * self.call.tokens_per_frame

        def cut_timestep(timestep):  # one timestep per token, frame by frame: this clip's tokens
            if isinstance(timestep, torch.Tensor) and timestep.ndim == 2:
                return timestep[:, rank * tokens : (rank + 1) * tokens]
            return timestep

        args = list(args)
        if args:
            args[0] = x[:, :, frames].contiguous()
        else:
            kwargs["hidden_states"] = x[:, :, frames].contiguous()
        if len(args) > 1:
            args[1] = cut_timestep(args[1])
        elif "timestep" in kwargs:
            kwargs["timestep"] = cut_timestep(kwargs["timestep"])
        return tuple(args), kwargs

    def post_forward(self, module, output):
        if self.group is None:
            return output
        if isinstance(output, tuple):
            return (self.comm.all_gather(output[0], self.group, dim=2), *output[1:])
        output.sample = self.comm.all_gather(output.sample, self.group, dim=2)
        return output


class GlobalPositionsHook(ModelHook):
    """On `rope`: the rotary embedding of this rank's clip at its frames' places in the whole video."""

    def __init__(self, call: CallLayout, rank: int) -> None:
        super().__init__()
        self.call, self.rank = call, rank

    def new_forward(self, module, hidden_states):
        layout = self.call.layout
        b, c, frames, h, w = hidden_states.shape
        if frames * layout.clips > module.max_seq_len:
            raise ValueError(
                f"a video of {frames * layout.clips} frames is longer than the {module.max_seq_len} positions of "
                "this transformer's rotary embedding (`rope_max_seq_len`); ask for fewer frames"
            )
        whole = hidden_states.new_empty(0, c, frames * layout.clips, h, w)  # the embedding reads shapes only
        cos, sin = self.fn_ref.original_forward(whole)
        tokens = layout.clip_frames * self.call.tokens_per_frame
        mine = slice(self.rank * tokens, (self.rank + 1) * tokens)
        return cos[:, mine], sin[:, mine]


class ClipContextAttention:
    """One rank's dual-scope attention product: its clip's queries over its own keys/values, its neighbours'
    boundary frames' and every clip's global frames', one softmax over their union."""

    def __init__(self, call: CallLayout, group, comm) -> None:
        self.call, self.group, self.comm = call, group, comm

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        layout, rank = self.call.layout, self.group.rank
        kv = torch.stack([k, v]).unflatten(3, (layout.clip_frames, self.call.tokens_per_frame))  # (2,B,H,F,T,D)
        context = self.boundary(kv, layout.config.boundary_frames)
        if layout.config.global_frames:
            gathered = self.comm.all_gather(kv[:, :, :, layout.global_offsets], self.group, dim=3)
            context.append(gathered[:, :, :, layout.distant_global(rank)])
        keys = torch.cat([kv, *context], dim=3).flatten(3, 4)
        return F.scaled_dot_product_attention(q, keys[0], keys[1])

    def boundary(self, kv: torch.Tensor, b: int) -> list[torch.Tensor]:
        """The neighbours' nearest `b` frames of keys/values: rank r−1's last and rank r+1's first."""
        rank, last = self.group.rank, self.group.size - 1
        if b == 0:
            return []
        outgoing = []  # (tensor, neighbour): each kept until its send completes
        if rank > 0:
            outgoing.append((kv[:, :, :, :b].contiguous(), rank - 1))
        if rank < last:
            outgoing.append((kv[:, :, :, -b:].contiguous(), rank + 1))
        sends = [self.comm.send(tensor, self.group, neighbour) for tensor, neighbour in outgoing]
        received = []
        if rank > 0:
            received.append(self.comm.recv(kv[:, :, :, :b], self.group, rank - 1))
        if rank < last:
            received.append(self.comm.recv(kv[:, :, :, :b], self.group, rank + 1))
        for work in sends:
            work.wait()
        return received


class ClipByClipAttention:
    """The single-process equivalent: for each clip in turn, its queries over the keys/values a rank would hold
    (own frames, neighbours' boundary frames, distant global frames, in the ranks' order, so the sums run as
    theirs do and a whole sampling run stays within float rounding of the ranks)."""

    def __init__(self, call: CallLayout) -> None:
        self.call = call

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        layout, t = self.call.layout, self.call.tokens_per_frame
        f, b = layout.clip_frames, layout.config.boundary_frames
        kv = torch.stack([k, v]).unflatten(3, (layout.frames, t))  # (2, B, H, frames, T, D)
        outs = []
        for clip in range(layout.clips):
            own = range(clip * f, (clip + 1) * f)
            left = range(max(0, own.start - b), own.start)
            right = range(own.stop, min(layout.frames, own.stop + b))
            distant = [layout.global_frames()[i] for i in layout.distant_global(clip)]
            keys = kv[:, :, :, [*own, *left, *right, *distant]].flatten(3, 4)
            outs.append(F.scaled_dot_product_attention(q[:, :, own.start * t : own.stop * t], keys[0], keys[1]))
        return torch.cat(outs, dim=2)


class DualScopeProcessor:
    """A Wan self-attention processor whose attention product is `attention(q, k, v)` on (batch, heads, tokens,
    head dim): the projections, QK-norms and rotary embedding are diffusers' (`WanAttnProcessor`'s path for
    self-attention), so only what the queries see changes."""

    def __init__(self, attention) -> None:
        self.attention = attention

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))  # (B, S, H, D)
        if rotary_emb is not None:
            freqs = tuple(f[0, :, 0] for f in rotary_emb)  # (S, D) each
            q, k = (apply_rotary_emb(x, freqs, sequence_dim=1) for x in (q, k))
        out = self.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _self_attentions(transformer) -> list:
    return [block.attn1 for block in transformer.blocks]


def _install(transformer, call: CallLayout, attention, clip_hook: ClipHook, rank: int | None) -> None:
    if any(isinstance(attn.processor, DualScopeProcessor) for attn in _self_attentions(transformer)):
        raise ValueError("Video-Infinity is already installed on this transformer; remove it first")
    for attn in _self_attentions(transformer):
        attn._ditserve_original_processor = attn.processor
        attn.set_processor(DualScopeProcessor(attention))
    add_hook(transformer, transformer, clip_hook, CLIP_HOOK)
    if rank is not None:
        add_hook(transformer, transformer.rope, GlobalPositionsHook(call, rank), POSITIONS_HOOK)


def apply_video_infinity(transformer, config: VideoInfinityConfig, group, comm) -> None:
    """Make this rank (member `group.rank` of `group`) compute its clip of every call of a Wan `transformer`,
    with Video-Infinity's boundary and global context in self-attention (undo: `remove_video_infinity`)."""
    call = CallLayout(group.size, config)
    attention = ClipContextAttention(call, group, comm)
    _install(transformer, call, attention, ClipHook(call, group, comm), group.rank)


def apply_single_process_equivalent(transformer, config: VideoInfinityConfig, clips: int) -> None:
    """Video-Infinity's attention pattern for `clips` clips computed in this one process over the whole video,
    clip by clip (the reference the ranks must match; undo: `remove_video_infinity`)."""
    call = CallLayout(clips, config)
    _install(transformer, call, ClipByClipAttention(call), ClipHook(call), None)


def remove_video_infinity(transformer) -> None:
    """Give the self-attentions their own processors back and remove the hooks."""
    for attn in _self_attentions(transformer):
        original = attn.__dict__.pop("_ditserve_original_processor", None)
        if original is not None:
            attn.set_processor(original)
    remove_hook(transformer, POSITIONS_HOOK)
    remove_hook(transformer, CLIP_HOOK)


class VideoInfinityRunnerConfig(DistributedConfig, VideoInfinityConfig):
    """Video-Infinity's context fields (`VideoInfinityConfig`) and the ranks' degrees; one clip per rank."""

    name: Literal["video-infinity"] = "video-infinity"
    clips: int = Field(2, ge=2, le=64)
    """Ranks, one clip (an equal run of the video's latent frames) each; must divide the latent frames."""

    def degrees(self) -> Degrees:
        return Degrees(ring=self.clips, cfg=self.cfg, dp=self.dp)

    def context(self) -> VideoInfinityConfig:
        return VideoInfinityConfig(boundary_frames=self.boundary_frames, global_frames=self.global_frames)


@PARALLEL.register("video-infinity")
class VideoInfinity(DistributedRunner):
    """Video-Infinity: a long video cut into clips, one per rank, each attending to its neighbours' boundary
    frames and every clip's global frames."""

    Config = VideoInfinityRunnerConfig

    def check(self, model, plan) -> None:
        family = model.adapter.family
        if family != "wan":
            raise PlanError(
                f"runner 'video-infinity' cuts videos of the wan family, not family {family!r}; serve this model "
                "with a runner for its family (`ulysses`, `ring`, `cfg`, `data`)"
            )

    def check_size(self, model, height: int, width: int) -> None:
        """Every size is cut: the clips split frames, not tokens (`check_frames` checks those)."""

    def check_frames(self, model, frames: int) -> None:
        """Refuse a frame count whose latent frames the clips cannot split equally, or whose clips are too short
        to lend their boundary and global frames."""
        clips, context = self.config.clips, self.config.context()
        latent = model.adapter.latent_shape(model, *model.adapter.default_size(model), frames=frames)[1]
        latent //= model.transformer.config.patch_size[0]
        if latent % clips:
            raise RequestError(
                "num_frames",
                f"{frames} frames make {latent} latent frames, which {clips} clips (plan.parallel.clips) cannot "
                f"split equally; ask for a frame count whose latent frames are a multiple of {clips}",
            )
        need = max(context.boundary_frames, context.global_frames)
        if latent // clips < need:
            raise RequestError(
                "num_frames",
                f"{frames} frames make clips of {latent // clips} latent frames, too short to lend {need} boundary "
                f"or global frames each; ask for at least {need * clips} latent frames",
            )

    def install(self, model, placement) -> None:
        transformer = model.transformer
        apply_video_infinity(transformer, self.config.context(), placement.groups.sp, placement.comm)
        self.installed(lambda: remove_video_infinity(transformer))
