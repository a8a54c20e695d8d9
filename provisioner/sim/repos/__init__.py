"""Apt repositories the simulated host and containers use (a stand-in for NVIDIA's CUDA repository)."""
