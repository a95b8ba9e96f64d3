"""The accompanist (issue 21): hears the given stems, writes parts on their beat and harmony, renders them, hands over MIDI."""

from stemweave.engine.accompanist.analysis import Analysis, Controls, analyse

__all__ = ["Analysis", "Controls", "analyse"]
