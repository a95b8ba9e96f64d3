"""Stemweave: separate, accompany and generate stems with multi-source diffusion models."""

__version__ = "0.1.0"
