"""AsyncDiff (Chen et al., 2024, "AsyncDiff: Parallelizing Diffusion Models by Asynchronous Denoising"):
the denoiser split into N components on N ranks, each working on the previous step's output of the one
before it, so that all N run at once.

The transformer's blocks are cut into N consecutive components, one per rank of the `pipefusion` group
(see `stages.py`). Sequentially, step t would run component 1 on x_t, component 2 on its output, and
so on. Asynchronously (stride 1, the paper's basic scheme), at step t component 1 takes the fresh x_t
while component n > 1 takes what component n-1 produced at step t-1, which is already there: all
components compute at the same time. After the step every component's output is all-gathered, each
rank keeping its predecessor's output (its input for the next step) and every rank the last
component's output (the stack's output, which the sampler steps on). Hidden states of neighbouring
steps are similar, which is what makes the one-step-old inputs good enough; the noise prediction at step
t thereby depends on x_t, x_{t+1}, ..., x_{t+N-1} through the N components.

Warm-up: the first `warmup_steps` transformer calls run the components one after the other (component n
waits for component n-1 of the same step): exact, and they give every component a real previous-step
input to start from. The paper warms up with a few sequential steps as well. The default here, 2, was
measured on digits-dit (2 components, DDIM, guidance 4, PSNR against the single-process images of the
same seeds): warm-up 1 / 2 gives 35.9 / 38.8 dB at 50 steps, 31.7 / 33.1 dB at 20 and 28.7 / 29.9 dB
at 12. Fewer steps mean larger changes between steps and so staler inputs: AsyncDiff wants many steps
(the fidelity test runs digits-dit's own 50).

Communication per step, per rank: its component's output (B·S·D elements) all-gathered, B·S·D·(N-1);
during warm-up the same bytes go stage to stage and are broadcast from the last component.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ditserve.parallel.distributed import DistributedConfig, DistributedRunner
from ditserve.parallel.groups import Degrees
from ditserve.parallel.stages import check_no_cache, check_stages, give_back, pipeline, take_over
from ditserve.registry import PARALLEL


class AsyncComponents:
    """One rank's share of AsyncDiff: its component, and the input it kept from the previous step."""

    def __init__(self, group, comm, warmup_steps: int) -> None:
        self.group, self.comm, self.warmup_steps = group, comm, warmup_steps
        self.reset()

    def reset(self) -> None:
        """Forget the previous request's activations (called before every request)."""
        self.calls = 0
        self.stale: torch.Tensor | None = None

    def step(self, hidden: torch.Tensor, run) -> torch.Tensor:
        """One transformer call's block stack: sequential during warm-up, else every component at once."""
        group = self.group
        if self.calls < self.warmup_steps:
            received, out = pipeline(hidden, run, group, self.comm, 1)
            self.stale = received[0]  # component n-1's output of this step: component n's input at the next
        else:
            x = hidden if group.rank == 0 else self.stale
            parts, work = self.comm.all_gather_async(run(x), group)
            work.wait()
            self.stale = parts[group.rank - 1] if group.rank else None
            out = parts[-1]
        self.calls += 1
        return out


class AsyncDiffConfig(DistributedConfig):
    name: Literal["asyncdiff"] = "asyncdiff"
    components: int = Field(2, ge=2, le=64)
    """Components the denoiser's blocks are split into, one rank each; must divide the transformer blocks."""
    warmup_steps: int = Field(2, ge=1, le=1000)
    """Transformer calls at the start of a request that run the components one after the other (exact)."""

    def degrees(self) -> Degrees:
        return Degrees(pipefusion=self.components, cfg=self.cfg, dp=self.dp)


@PARALLEL.register("asyncdiff")
class AsyncDiff(DistributedRunner):
    """AsyncDiff: denoiser components in parallel, each on its predecessor's output from the previous step."""

    Config = AsyncDiffConfig

    def check(self, model, plan) -> None:
        super().check(model, plan)
        check_no_cache(self.name, plan)
        check_stages(self.name, model, self.config.components, "components")

    def install(self, model, placement) -> None:
        group = placement.groups.pipefusion
        components = AsyncComponents(group, placement.comm, self.config.warmup_steps)
        take_over(model, group, components.step)
        self.installed(lambda: give_back(model), components.reset)
