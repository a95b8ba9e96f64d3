"""Presets: the papers' sampler settings as TOML, shipped as package data."""
