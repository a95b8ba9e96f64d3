"""Audio files in and out: formats, bit depths, validation errors that say what to do, atomic writes."""

import os

import numpy as np
import pytest
import soundfile as sf

from stemweave.engine.audio_io import AudioError, check_output_dir, read_audio, write_audio, write_json


def tone(channels=2, frames=4410, rate=44100):
    t = np.arange(frames) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype,tol", [("WAV", "PCM_16", 1e-4), ("WAV", "PCM_24", 1e-6), ("WAV", "FLOAT", 0),
                                             ("FLAC", "PCM_24", 1e-6), ("AIFF", "PCM_16", 1e-4), ("OGG", "VORBIS", 0.05)])
def test_reads_formats_as_float32_channels_first(tmp_path, fmt, subtype, tol):
    audio = tone()
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, audio.T, 48000, subtype=subtype, format=fmt)
    read, rate = read_audio(path)
    assert rate == 48000 and read.dtype == np.float32 and read.shape == audio.shape
    assert np.abs(read - audio).max() <= tol


@pytest.mark.parametrize("fmt,depth", [("wav", "16"), ("wav", "24"), ("wav", "32f"), ("flac", "16"), ("flac", "24")])
def test_writes_formats_atomically(tmp_path, fmt, depth):
    path = write_audio(tmp_path / "sub" / f"y.{fmt}", tone(1), 44100, format=fmt, bit_depth=depth)
    read, rate = read_audio(path)
    assert rate == 44100 and read.shape == (1, 4410)
    assert np.abs(read - tone(1)).max() < (1e-7 if depth == "32f" else 1e-4)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_flac_refuses_float_and_unknown_depth(tmp_path):
    with pytest.raises(AudioError, match="FLAC"):
        write_audio(tmp_path / "z.flac", tone(1), 44100, format="flac", bit_depth="32f")
    with pytest.raises(AudioError, match="bit depth"):
        write_audio(tmp_path / "z.wav", tone(1), 44100, bit_depth="8")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "keep.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def _bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "missing":
        return path, "no such file"
    if kind == "text":
        path.write_text("this is not audio")
        return path, "not a readable audio file"
    if kind == "empty":
        sf.write(path, np.zeros((0, 1), np.float32), 44100)
        return path, "zero length"
    if kind == "nan":
        sf.write(path, np.full((100, 1), np.nan, np.float32), 44100, subtype="FLOAT")
        return path, "NaN"
    if kind == "surround":
        sf.write(path, np.zeros((100, 6), np.float32), 44100)
        return path, "6 channels.*downmix"
    if kind == "folder":
        path.mkdir()
        return path, "not a file"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "nan", "surround", "folder"])
def test_bad_inputs_give_clear_errors(tmp_path, kind):
    path, message = _bad_file(tmp_path, kind)
    with pytest.raises(AudioError, match=message):
        read_audio(path)


def test_unsupported_rate(tmp_path):
    path = tmp_path / "slow.wav"
    sf.write(path, np.zeros((100, 1), np.float32), 500)
    with pytest.raises(AudioError, match="sample rate"):
        read_audio(path)


def test_output_dir_checks_without_writing(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []  # created only when something is written
    (tmp_path / "file").write_text("x")
    with pytest.raises(AudioError, match="not a folder"):
        check_output_dir(tmp_path / "file" / "out")
    with pytest.raises(AudioError, match="not writable"):
        check_output_dir("/proc/stemweave-out")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:
        with pytest.raises(AudioError, match="not writable"):
            check_output_dir(locked)
    else:  # root may write there (os.access and the probe agree), and nothing is left behind
        assert check_output_dir(locked) == locked and list(locked.iterdir()) == []


def test_a_folder_whose_permissions_allow_writing_but_writing_fails_is_refused_also_for_root(tmp_path):
    """os.access says yes (to root everywhere, and here to everyone): only the probe file finds out. A folder that
    was removed while open (/proc/self/fd/N) has write permission and cannot take a file, for root too."""
    gone = tmp_path / "gone"
    gone.mkdir()
    fd = os.open(gone, os.O_RDONLY)
    try:
        gone.rmdir()
        folder = f"/proc/self/fd/{fd}"
        assert os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)
        with pytest.raises(AudioError, match=r"fd/\d+ is not writable: choose another"):
            check_output_dir(folder)
        with pytest.raises(AudioError, match=r"it would be created in /proc/self/fd/\d+, which is not writable"):
            check_output_dir(f"{folder}/stems")
    finally:
        os.close(fd)


def test_written_files_get_the_usual_permissions_not_the_temporary_files(tmp_path):
    umask = os.umask(0o022)
    try:
        wav = write_audio(tmp_path / "stem.wav", np.zeros((1, 100), np.float32), 8000)
        card = write_json(tmp_path / "card.json", {"a": 1})
    finally:
        os.umask(umask)
    assert (os.stat(wav).st_mode & 0o777) == (os.stat(card).st_mode & 0o777) == 0o644
