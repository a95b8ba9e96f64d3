"""The accompanist (issue 21): hears the given stems, writes parts on their beat and harmony, renders them
through the soundfont synth and hands over their MIDI. A method behind the accompany and generate tasks,
beside the diffusion priors (docs/accompanist.md)."""

from stemweave.engine.accompanist.analysis import Analysis, Controls, analyse
from stemweave.engine.accompanist.core import Accompaniment, accompany, generate_loop, generate_seconds, loop_frames
from stemweave.engine.accompanist.writer import STYLES

__all__ = ["Accompaniment", "Analysis", "Controls", "STYLES", "accompany", "analyse", "generate_loop", "generate_seconds", "loop_frames"]
