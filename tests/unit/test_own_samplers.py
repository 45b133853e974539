"""The own solvers (DPM-Solver-v3, DC-Solver, Sampler Scheduler, ParaDiGMS, ParaTAA) on the analytic
Gaussian case — exact solution, convergence order from the error slope — and on the real digits model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gaussian_data import FLOW_CONFIG, VP_CONFIG, GaussianData, RotatedGaussianData, error, run
from safetensors.torch import save_file

from ditserve.errors import PlanError
from ditserve.registry import SAMPLERS
from ditserve.sampling.dc_solver import DCSolver, DCSolverConfig, search_ratios
from ditserve.sampling.dpm_solver_v3 import DPMSolverV3, DPMSolverV3Config, Statistics, estimate_statistics
from ditserve.sampling.ode import Progress
from ditserve.sampling.paradigms import ParaDiGMS, ParaDiGMSConfig
from ditserve.sampling.parataa import ParaTAA, ParaTAAConfig
from ditserve.sampling.sampler_scheduler import SamplerScheduler, SamplerSchedulerConfig

CONFIGS = pytest.mark.parametrize("scheduler_config", [VP_CONFIG, FLOW_CONFIG], ids=["epsilon", "flow"])
OWN = ["dpm-solver-v3", "dc-solver", "sampler-scheduler", "paradigms", "parataa"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def slope(steps: list[int], errors: list[float]) -> float:
    """Fitted order: minus the slope of log error against log steps."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def save_statistics(path, stats: dict) -> str:
    save_file({k: v.float().contiguous() for k, v in stats.items()}, str(path))
    return str(path)


# -- DPM-Solver-v3 -------------------------------------------------------------------------------------


@CONFIGS
def test_v3_with_the_models_statistics_solves_gaussian_data_almost_exactly(scheduler_config, tmp_path):
    """On Gaussian data the EMS make the reparameterised g constant in λ: 5 steps land on the true solution,
    where DPM-Solver++ (the same update with l = 1, s = b = 0) is far off."""
    data = GaussianData(scheduler_config)
    ns = data.schedule
    eps_fn = lambda x, tau: ns.noise(data.denoise(x, torch.tensor(tau)), x, tau)  # noqa: E731
    stats = estimate_statistics(eps_fn, data.noise(8, seed=5), ns, grid=250, smoothing=1)  # exact: no need
    solver = DPMSolverV3(DPMSolverV3Config(statistics=save_statistics(tmp_path / "ems.safetensors", stats)),
                         scheduler_config)  # fmt: skip
    noise = data.noise(4)
    calibrated = error(solver, data, noise, 5)
    solver.statistics = Statistics.degenerate(ns, data.shape, 250)
    plus_plus = error(solver, data, noise, 5)
    assert calibrated < 5e-3, calibrated  # what is left: the trapezoidal integrals on the statistics' grid
    assert plus_plus > 30 * calibrated, (plus_plus, calibrated)


@CONFIGS
def test_v3_statistics_from_noisy_probes_still_beat_plus_plus_fivefold(scheduler_config, tmp_path):
    """Rotated Gaussian data (a non-diagonal Jacobian, so the Hutchinson probes of l are noisy, and no
    per-pixel split is exact): statistics from 16 calibration samples at the default smoothing keep v3 at
    5 steps five times closer to the true solution than DPM-Solver++'s update (l = 1, s = b = 0; measured: 10x)."""
    data = RotatedGaussianData(scheduler_config)
    ns = data.schedule
    eps_fn = lambda x, tau: ns.noise(data.denoise(x, torch.tensor(tau)), x, tau)  # noqa: E731
    stats = estimate_statistics(eps_fn, data.noise(16, seed=5), ns)
    solver = DPMSolverV3(DPMSolverV3Config(statistics=save_statistics(tmp_path / "ems.safetensors", stats)),
                         scheduler_config)  # fmt: skip
    noise = data.noise(4)
    calibrated = error(solver, data, noise, 5)
    solver.statistics = Statistics.degenerate(ns, data.shape)
    assert 5 * calibrated < error(solver, data, noise, 5), calibrated


@pytest.mark.parametrize(
    ("scheduler_config", "order", "corrector", "stated"),
    [(VP_CONFIG, 1, False, 1), (VP_CONFIG, 2, False, 2), (VP_CONFIG, 2, True, 3), (VP_CONFIG, 3, True, 4),
     (FLOW_CONFIG, 2, True, 3)],
    ids=["epsilon-1", "epsilon-2", "epsilon-2c", "epsilon-3c", "flow-2c"],
)  # fmt: skip
def test_v3_converges_at_its_stated_order(scheduler_config, order, corrector, stated, tmp_path):
    """With the statistics of other data (so the update is no longer exact), the error falls as
    steps^-order (+1 with the corrector)."""
    data, other = GaussianData(scheduler_config), GaussianData(scheduler_config, seed=3, spread=1.0)
    ns = data.schedule
    lambdas = torch.linspace(float(ns.lam(ns.tau_max)), float(ns.lam(ns.tau_min)), 2001, dtype=torch.float64)
    taus = ns.tau(lambdas.numpy())
    alpha, sigma = (torch.from_numpy(f(taus)).reshape(-1, 1, 1, 1) for f in (ns.alpha, ns.sigma))
    l = sigma**2 / (alpha**2 * other.std**2 + sigma**2)  # noqa: E741  σ E[∂ε̂/∂x] of the other data, exactly
    stats = {"lambdas": lambdas, "l": l, "s": torch.zeros_like(l), "b": torch.zeros_like(l)}
    config = DPMSolverV3Config(statistics=save_statistics(tmp_path / "ems.safetensors", stats), order=order,
                               corrector=corrector, spacing="logsnr", lower_order_final=False)  # fmt: skip
    solver = DPMSolverV3(config, scheduler_config)
    steps = [20, 40, 80]
    errors = [error(solver, data, data.noise(2), n) for n in steps]
    assert slope(steps, errors) > stated - 0.2, errors


def v3_plus_plus_run(
    data: GaussianData, noise: torch.Tensor, taus: np.ndarray, per_step: int, tmp_path
) -> torch.Tensor:
    """v3 with l = 1, s = b = 0 on a grid that holds every step's λ, each step split into `per_step` intervals."""
    ns = data.schedule
    lam = ns.lam(taus)
    grid = np.concatenate([np.linspace(a, b, per_step + 1)[:-1] for a, b in zip(lam[:-1], lam[1:], strict=True)])
    lambdas = torch.from_numpy(np.append(grid, lam[-1]))
    ones = torch.ones((len(lambdas), *data.shape), dtype=torch.float64)
    stats = {"lambdas": lambdas, "l": ones, "s": 0 * ones, "b": 0 * ones}
    config = DPMSolverV3Config(statistics=save_statistics(tmp_path / f"pp-{per_step}.safetensors", stats), order=2,
                               corrector=False)  # fmt: skip
    solver = DPMSolverV3(config, VP_CONFIG)
    solver.statistics = Statistics(lambdas, ones, 0 * ones, 0 * ones)  # float64, as saved files are float32
    return solver.integrate(data.denoise, noise, taus, lambda *a: None)


def test_v3_with_plus_plus_statistics_is_diffusers_dpm_solver_plus_plus(tmp_path):
    """With l = 1, s = b = 0 the v3 predictor is DPM-Solver++(2M) (the linear Taylor term integrated exactly:
    diffusers' solver_type="heun"): on the same timesteps it matches diffusers' scheduler up to the trapezoidal
    quadrature on the statistics' grid, whose error falls as the square of the grid spacing."""
    from diffusers import DPMSolverMultistepScheduler

    data = GaussianData(VP_CONFIG)
    noise = data.noise(3)
    scheduler = DPMSolverMultistepScheduler.from_config(
        VP_CONFIG, algorithm_type="dpmsolver++", solver_order=2, solver_type="heun", final_sigmas_type="sigma_min"
    )
    scheduler.set_timesteps(timesteps=[900, 700, 500, 350, 220, 110, 40])
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(data.denoise(x, t), t, x).prev_sample
    taus = np.append(scheduler.timesteps.numpy().astype(float), 0.0)  # its last step goes to timestep 0
    errors = [float((v3_plus_plus_run(data, noise, taus, n, tmp_path) - x).abs().max()) for n in (100, 200)]
    assert errors[1] < 2e-4, errors
    assert 3.0 < errors[0] / errors[1] < 5.0, errors  # quadrature: O(grid spacing²)
    assert float((x - noise).abs().max()) > 0.1  # the sampler moved: the agreement is not trivial


def test_v3_refuses_to_load_without_statistics(tmp_path):
    with pytest.raises(PlanError, match="ditserve calibrate --sampler dpm-solver-v3"):
        DPMSolverV3(DPMSolverV3Config(), VP_CONFIG)
    with pytest.raises(PlanError, match="does not exist"):
        DPMSolverV3(DPMSolverV3Config(statistics=str(tmp_path / "missing.safetensors")), VP_CONFIG)


# -- DC-Solver -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("order", "stated"), [(1, 2), (2, 3)])
@CONFIGS
def test_dc_solver_converges_at_its_stated_order(scheduler_config, order, stated):
    """With every ratio 1 it is UniPC: predictor order p plus the corrector's one."""
    data = GaussianData(scheduler_config)
    config = DCSolverConfig(order=order, ratios={20: [1.0] * 20}, spacing="logsnr", lower_order_final=False)
    solver = DCSolver(config, scheduler_config)
    steps = [20, 40, 80, 160]
    errors = [error(solver, data, data.noise(2), n) for n in steps]
    assert slope(steps, errors) > stated - 0.3, errors


@CONFIGS
def test_dc_solver_searched_ratios_bring_few_steps_closer_to_the_true_solution(scheduler_config):
    data = GaussianData(scheduler_config)
    unit = DCSolver(DCSolverConfig(ratios={5: [1.0] * 5}), scheduler_config)
    ns = data.schedule
    data_fn = lambda x, tau: ns.data(data.denoise(x, torch.tensor(tau)), x, tau)  # noqa: E731
    ratios = search_ratios(unit, data_fn, data.noise(8, seed=7), unit.taus(5, None))
    searched = DCSolver(DCSolverConfig(ratios={5: ratios}), scheduler_config)
    noise = data.noise(8, seed=11)  # other samples than the search saw
    assert ratios != [1.0] * 5
    assert error(searched, data, noise, 5) < 0.8 * error(unit, data, noise, 5)


def test_dc_solver_resamples_the_nearest_calibrated_ratios():
    solver = DCSolver(DCSolverConfig(ratios={5: [1.0, 1.0, 1.2, 0.8, 1.0], 20: [1.0] * 20}), VP_CONFIG)
    assert solver.ratios_for(5) == [1.0, 1.0, 1.2, 0.8, 1.0]
    assert solver.ratios_for(16) == [1.0] * 16
    assert len(solver.ratios_for(7)) == 7
    with pytest.raises(PlanError, match="ditserve calibrate --sampler dc-solver"):
        DCSolver(DCSolverConfig(), VP_CONFIG)


# -- ParaDiGMS and ParaTAA -------------------------------------------------------------------------------


@pytest.mark.parametrize("tolerance", [None, 1e-3], ids=["default-tolerance", "tight"])
@pytest.mark.parametrize("parallel", [ParaDiGMSConfig(window=16), ParaDiGMSConfig(window=50), ParaTAAConfig()], ids=str)
@CONFIGS
def test_parallel_samplers_reach_the_sequential_result_in_fewer_rounds(scheduler_config, parallel, tolerance):
    """At the default tolerance (relative to σ) within 40 dB (over a range of 2) of the sequential sampler; at
    a tight one, within that tolerance everywhere; in at most half the sequential rounds either way."""
    data = GaussianData(scheduler_config)
    noise = data.noise(4)
    sequential = run(ParaDiGMS(ParaDiGMSConfig(window=1), scheduler_config), data, noise, 50)
    calls: list[int] = []
    cls = ParaTAA if isinstance(parallel, ParaTAAConfig) else ParaDiGMS
    config = parallel if tolerance is None else parallel.model_copy(update={"tolerance": tolerance})
    out = run(cls(config, scheduler_config), data, noise, 50, calls)
    if tolerance is None:
        assert float((out - sequential).pow(2).mean().sqrt()) < 2 * 10 ** (-40 / 20)
    else:
        assert float((out - sequential).abs().max()) < tolerance
    assert len(calls) * 2 <= 50, f"{len(calls)} sequential rounds for 50 steps"
    assert sum(calls) >= 50 * noise.shape[0]  # the work is still done, in batched calls


def test_sequential_paradigms_is_ddim(tmp_path):
    """window 1 is the DDIM ODE step: on Gaussian data it converges at first order."""
    data = GaussianData(VP_CONFIG)
    solver = ParaDiGMS(ParaDiGMSConfig(window=1, spacing="logsnr"), VP_CONFIG)
    steps = [20, 40, 80, 160]
    assert slope(steps, [error(solver, data, data.noise(2), n) for n in steps]) > 0.7


# -- Sampler Scheduler -----------------------------------------------------------------------------------


def test_sampler_scheduler_runs_its_stages_over_their_ranges():
    data = GaussianData(VP_CONFIG)
    noise = data.noise(2)
    first = {"name": "paradigms", "window": 1}
    second = {"name": "dc-solver", "ratios": {10: [1.0] * 10}}
    config = SamplerSchedulerConfig(steps=10, stages=[{"sampler": first, "until": 0.3}, {"sampler": second}])
    scheduler = SamplerScheduler(config, VP_CONFIG)
    assert scheduler.boundaries(10) == [3, 10]
    taus = scheduler.taus(10, None)
    denoise = data.denoise
    by_hand = scheduler.stages[0].integrate(denoise, noise, taus[:4], Progress(lambda *a: None, 0, 10))
    by_hand = scheduler.stages[1].integrate(denoise, by_hand, taus[3:], Progress(lambda *a: None, 3, 10))
    seen = []
    out = scheduler.sample(denoise, noise, 10, [], lambda done, total, x: seen.append((done, total)))
    assert torch.equal(out, by_hand)
    assert [done for done, _ in seen] == list(range(1, 11))
    with pytest.raises(PlanError, match="cannot run a range of steps"):
        SamplerScheduler(SamplerSchedulerConfig(stages=[{"sampler": {"name": "ddim"}}]), VP_CONFIG)


# -- declared prediction types ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", OWN)
def test_own_samplers_refuse_models_of_other_prediction_types(name):
    sample_config = {**VP_CONFIG, "prediction_type": "sample"}
    spec = {"name": name}
    if name == "sampler-scheduler":
        spec["stages"] = [{"sampler": {"name": "paradigms"}}]
    config = SAMPLERS.parse(spec, "plan.sampler")
    with pytest.raises(PlanError, match="predicts 'sample'"):
        SAMPLERS.get(name)(config, sample_config)
