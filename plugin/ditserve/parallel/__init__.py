"""Multi-process runners on torch.distributed, registered in `ditserve.registry.PARALLEL`."""
