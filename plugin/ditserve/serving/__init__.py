"""Transports over one engine: the BentoML service (REST, OpenAI-compatible route, SSE, tasks, playground)
and the gRPC server it starts. They translate; the scheduler and engine do the work."""
