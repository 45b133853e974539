"""The cache battery for `toca`, on token counts, with self-attention reused and partial (its V-norm score runs in
DuCa's battery); every token recomputed gives uncached output; and a token cache broken on purpose fails the CI
fidelity check."""

from typing import Literal

import pytest
import torch

from ditserve.caching.floors import FIDELITY_FLOORS_DB
from ditserve.caching.toca import ToCa, ToCaConfig
from ditserve.registry import CACHES

from .battery import CacheBattery
from .conftest import FamilyLoop
from .test_fidelity import engines, fidelity_problems, references, registered_for_test  # noqa: F401 (fixtures)


class TestToCa(CacheBattery):
    name = "toca"
    exact = {"interval": 1}
    skipping = {"interval": 3}
    unit = "token"


class TestToCaPartialAttention(TestToCa):
    skipping = {"interval": 3, "attention": "partial"}


class StaleToCaConfig(ToCaConfig):
    name: Literal["stale-toca-for-test"] = "stale-toca-for-test"


class StaleToCa(ToCa):
    """ToCa broken on purpose: its schedule never comes back to a full call after the request's first, so
    attention outputs stay the first call's and only the picked tokens of token-wise layers move."""

    Config = StaleToCaConfig

    def _begin_call(self) -> None:
        super()._begin_call()
        if self.calls.call > 0:
            self.mode = "partial"


@pytest.fixture
def stale_toca():
    """`stale-toca-for-test` registered for this test only."""
    with registered_for_test(StaleToCa) as name:
        yield name


@pytest.mark.slow
def test_a_token_cache_that_never_refreshes_fails_the_fidelity_check(stale_toca, engines, references):  # noqa: F811
    """The CI fidelity check (test_fidelity.py) that ToCa's defaults pass catches ToCa with a broken schedule."""
    problems = fidelity_problems(engines, references, {"name": stale_toca}, FIDELITY_FLOORS_DB["toca"])
    assert problems and all("under the floor" in p for p in problems), problems


def test_recomputing_every_token_on_partial_calls_gives_the_uncached_output(dit4_dir, uncached):
    """With `fraction: 1` a partial call recomputes every token of every layer — self-attention too, with `attention:
    partial` (queries of the picked tokens against the keys and values the projection hooks hand over) — so the
    output is uncached's up to rounding, though the schedule says partial: the gathers, scatters and cached keys
    and values put every row back where it belongs."""
    from .battery import engine_for, request

    settings = {"name": "toca", "interval": 3, "fraction": 1.0, "attention": "partial"}
    result = engine_for(dit4_dir, settings).generate(request())
    assert result.stats.token_evaluations == result.stats.token_evaluations_full
    torch.testing.assert_close(result.images, uncached.generate(request()).images, rtol=0, atol=1e-5)
    loop = FamilyLoop("pixart")  # cross-attention as a token-wise layer
    expected, _ = FamilyLoop("pixart").run()
    cache = ToCa(CACHES.parse(settings, "plan.cache"))
    cache.apply(loop.model)
    torch.testing.assert_close(loop.run()[0], expected, rtol=1e-4, atol=1e-5)
