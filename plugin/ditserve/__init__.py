"""ditserve: serve diffusion transformers fast.

A diffusers DiT pipeline goes in; an accelerated engine (caching, fast samplers, quantization,
multi-GPU runners, picked per model by a YAML config) comes out, served over REST and gRPC.

Importing this package is cheap: it loads no model, touches no GPU and imports no strategy. Import
what you use, e.g. `from ditserve.engine import Engine`.
"""

__version__ = "0.1.0"
