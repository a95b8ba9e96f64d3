"""`stemweave data`: bad input exits 2 with a message; renders resume; example and stats write their files."""

import os

import pytest
import soundfile as sf

from stemweave.cli import main
from stemweave.engine.data.render import DEFAULT_SOUNDFONT

needs_soundfont = pytest.mark.skipif(not os.path.exists(DEFAULT_SOUNDFONT), reason="no GM soundfont")


@pytest.mark.parametrize("argv, message", [
    (["--songs", "-3"], "--songs must be at least 1"),
    (["--songs", "2", "--seconds", "0"], "--seconds must be above 0"),
    (["--songs", "2", "--rate", "12"], "unsupported sample rate"),
    (["--songs", "2", "--soundfont", "/no/such.sf2"], "soundfont not found"),
    (["--songs", "2", "--jobs", "0"], "--jobs must be at least 1"),
])
def test_render_rejects_bad_input_with_exit_2(tmp_path, capsys, argv, message):
    assert main(["data", "render", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_render_into_an_unwritable_folder_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["data", "render", "--out", str(blocker / "out"), "--songs", "1"]) == 2
    assert "cannot write to" in capsys.readouterr().err


@needs_soundfont
def test_render_resumes_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "test"
    common = ["data", "render", "--out", str(out), "--split", "test", "--seconds", "2"]
    assert main([*common, "--songs", "2"]) == 0
    first = out / "Track00000" / "stems" / "S00.flac"
    stamp = first.stat().st_mtime_ns
    (out / ".Track00002.partial").mkdir()  # what an interrupted render leaves
    (out / ".Track00002.partial" / "junk").write_text("half-written")
    capsys.readouterr()
    assert main([*common, "--songs", "3"]) == 0
    assert "1 tracks rendered, 2 already there" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in out.iterdir()) == ["Track00000", "Track00001", "Track00002"]
    assert main([*common, "--songs", "3", "--rate", "16000"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*common, "--songs", "3", "--arrangement", "sparse"]) == 2
    assert "arrangement None there, 'sparse' asked" in capsys.readouterr().err


@needs_soundfont
def test_example_and_stats_write_their_files(tmp_path, capsys):
    example = tmp_path / "example.wav"
    assert main(["data", "example", "-o", str(example), "--seconds", "2", "--seed", "1"]) == 0
    audio, rate = sf.read(example)
    assert rate == 22_050 and audio.shape == (44_100,)
    assert main(["data", "example", "-o", str(tmp_path / "example.mp3")]) == 2
    assert main(["data", "render", "--out", str(tmp_path / "set"), "--songs", "2", "--seconds", "4"]) == 0
    assert main(["data", "stats", str(tmp_path / "set"), "-o", str(tmp_path / "docs")]) == 0
    report = (tmp_path / "docs" / "data-report.md").read_text()
    assert "non-silent windows" in report and "stemweave data render --split train" in report
    assert main(["data", "stats", str(tmp_path / "missing")]) == 2
    assert main(["data", "stats", str(tmp_path / "set"), "--benchmark", "-1"]) == 2
