"""Tooling for model files: packaging, quantization, offline signing. Runs off-device."""
