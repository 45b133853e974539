"""Samplers: one battery (battery.py) every sampler runs, plus each sampler's own checks (test_<name>.py)."""
