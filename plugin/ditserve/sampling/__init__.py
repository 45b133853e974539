"""Samplers: diffusers schedulers wrapped, and own solvers, registered in `ditserve.registry.SAMPLERS`."""
