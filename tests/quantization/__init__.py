"""Quantizers: one battery (battery.py) every quantizer runs, plus each quantizer's own checks (test_<name>.py)."""
