"""Data: procedural Slakh-like songs, FluidSynth rendering, and training datasets."""
