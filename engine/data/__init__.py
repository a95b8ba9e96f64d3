"""Data: procedural Slakh-like songs, FluidSynth rendering, and training datasets.

theory    keys, diatonic chords, common progressions, voicings
songs     the seeded song plan (tempo, meter, key, chords, sections) and its MIDI
parts     bass, drums, guitar and piano written from the plan
render    FluidSynth stems levelled like a mix; mixture = exact sum
loudness  BS.1770 integrated loudness and MSDM's silence rule
layout    the Slakh2100-style track folder and its metadata.yaml
build     split seed ranges; resumable, parallel rendering of a split
datasets  StemChunks, fixed_windows, list_tracks, mixture_captions (Slakh2100, MUSDB18-HQ, renders here)
stats     dataset statistics and the report
"""
