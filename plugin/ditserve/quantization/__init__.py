"""Weight/activation quantization and attention backends, registered in `ditserve.registry.QUANTIZERS`."""
