"""Video techniques on the Wan-family video model: samplers, caches and runners that need frames."""
