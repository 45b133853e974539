"""Helpers the test modules import by name: tiny checkpoints and engines over them.

They live here, not in conftest.py, because several test folders have a conftest.py of their own and
`from conftest import ...` would pick whichever one was imported first.
"""

from __future__ import annotations


def save_tiny_dit(path, *, with_vae: bool = False, prediction_type: str = "epsilon"):
    """A random 2-block DiT checkpoint directory in diffusers' layout (optionally a latent one with a VAE)."""
    import json

    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    in_channels = 4 if with_vae else 1
    DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=in_channels,
        out_channels=2 * in_channels if with_vae else in_channels,  # real DiT checkpoints learn sigma too
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    ).save_pretrained(path / "transformer")
    DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    ).save_pretrained(path / "scheduler")
    if with_vae:
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            norm_num_groups=4,
            layers_per_block=1,
        ).save_pretrained(path / "vae")
        labels = {"id2label": {str(i): f"class {i}" for i in range(10)}}
        (path / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline", **labels}))
    else:
        names = {str(i): f"label{i}, {i}" for i in range(10)}
        (path / "labels.json").write_text(json.dumps({"id2label": names}))
    return path


def engine_for(path, **plan):
    """An engine over a checkpoint directory with the given plan sections."""
    from ditserve.config import parse_config
    from ditserve.engine import Engine

    return Engine(parse_config({"model": {"name": "tiny", "path": str(path), "family": "dit"}, "plan": plan}))
