"""gRPC stubs for `ditserve.v1`, generated from proto/ditserve/v1/diffusion.proto by `make proto`; never edited."""
