"""Samplers: diffusers schedulers wrapped, and own solvers, registered in `ditserve.registry.SAMPLERS`."""

BUILTINS: dict[str, str] = {
    "dc-solver": "ditserve.sampling.dc_solver:DCSolver",
    "ddim": "ditserve.sampling.ddim:DDIM",
    "ddpm": "ditserve.sampling.ddpm:DDPM",
    "dpm-solver": "ditserve.sampling.dpm_solver:DPMSolver",
    "dpm-solver++": "ditserve.sampling.dpm_solver_pp:DPMSolverPP",
    "dpm-solver-v3": "ditserve.sampling.dpm_solver_v3:DPMSolverV3",
    "euler": "ditserve.sampling.euler:Euler",
    "euler-ancestral": "ditserve.sampling.euler_ancestral:EulerAncestral",
    "flow-euler": "ditserve.sampling.flow_euler:FlowEuler",
    "heun": "ditserve.sampling.heun:Heun",
    "none": "ditserve.sampling.none:CheckpointScheduler",
    "paradigms": "ditserve.sampling.paradigms:ParaDiGMS",
    "parataa": "ditserve.sampling.parataa:ParaTAA",
    "pndm": "ditserve.sampling.pndm:PNDM",
    "sampler-scheduler": "ditserve.sampling.sampler_scheduler:SamplerScheduler",
    "sde-dpm-solver++": "ditserve.sampling.sde_dpm_solver_pp:SDEDPMSolverPP",
    "unipc": "ditserve.sampling.unipc:UniPC",
}
"""The built-in strategies, name → "module:Class": a module is imported when its name is first looked up."""
