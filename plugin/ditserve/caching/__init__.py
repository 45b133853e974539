"""Feature caching across denoising steps: one strategy per file, registered in `ditserve.registry.CACHES`."""
