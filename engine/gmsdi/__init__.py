"""GMSDI (Postolache et al., ICASSP 2024): one text-conditioned mixture model prompted per stem (docs/gmsdi.md).

    from stemweave.engine import gmsdi
    stems = gmsdi.run("separate", "my-gmsdi.json", prompts=["bass", "drums", "guitar, piano"], audio=mix, rate=44100)
"""

from stemweave.engine.gmsdi.inference import GMSDIModel, load_gmsdi_preset, run

__all__ = ["GMSDIModel", "load_gmsdi_preset", "run"]
