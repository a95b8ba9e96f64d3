"""Audio output for the loop player: a sounddevice stream when there is a device, a paced virtual one when there is not.

Both keep sounddevice's callback contract, so the loop player's callback never
knows which it runs on:

    callback(outdata, frames, time, status)  # outdata: float32 (frames, channels), to be filled in place

`open_output` opens a PortAudio output stream (any host API PortAudio was
built with: ALSA, PulseAudio through ALSA, JACK, CoreAudio, WASAPI...) or
raises `NoAudioDevice` saying why. `VirtualStream` calls the same callback
from a thread of its own, paced to the wall clock (a machine without a sound
card still has a running loop clock: bars advance, swaps happen, `/status`
moves) or unpaced block by block (`run_blocks`, for tests: the rendered output
stream is returned so a test can check it to the sample).
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Callable

import numpy as np

Callback = Callable[[np.ndarray, int, object, object], None]


class NoAudioDevice(Exception):
    """No usable audio output (no PortAudio, no device, or the device refused the stream); the message says which."""


def open_output(callback: Callback, rate: int, channels: int, *, blocksize: int = 512, device=None,
                latency: str | float = "low"):
    """An unstarted sounddevice OutputStream running `callback`, or NoAudioDevice.

    device: None for PortAudio's default output, an index, or a substring of a device name (`python -m
    sounddevice` lists them; "JACK" picks the JACK host API's device when a JACK server runs)."""
    try:
        import sounddevice as sd
    except ImportError as error:
        raise NoAudioDevice(f"sounddevice is not installed ({error}): pip install sounddevice") from None
    except OSError as error:  # the PortAudio library itself is missing
        raise NoAudioDevice(f"PortAudio is not available ({error}): install libportaudio2") from None
    try:
        if device is None and sd.default.device[1] in (None, -1):
            raise NoAudioDevice("PortAudio finds no audio output device on this machine")
        return sd.OutputStream(samplerate=rate, channels=channels, dtype="float32", blocksize=blocksize,
                               device=device, latency=latency, callback=callback)
    except NoAudioDevice:
        raise
    except Exception as error:  # noqa: BLE001 - PortAudioError, ValueError (no such device), ...
        raise NoAudioDevice(f"cannot open audio output {device if device is not None else '(default)'}: {error}") \
            from None


def output_devices() -> list[str]:
    """Names of the output devices PortAudio sees (empty when none, or when PortAudio is missing)."""
    try:
        import sounddevice as sd

        return [d["name"] for d in sd.query_devices() if d["max_output_channels"] > 0]
    except Exception:  # noqa: BLE001
        return []


class VirtualStream:
    """A stand-in output stream with sounddevice's callback contract, for machines without a sound card and tests.

    paced=True: after start(), a thread calls the callback once per block at the block's wall-clock time (the
    output goes to `sink(block)` if given, else nowhere). run_blocks(n): n blocks at once, unpaced, returned as one
    (n * blocksize, channels) array; the stream must not be started.
    """

    def __init__(self, callback: Callback, rate: int, channels: int, *, blocksize: int = 512,
                 sink: Callable[[np.ndarray], None] | None = None):
        self.callback, self.samplerate, self.channels, self.blocksize = callback, int(rate), int(channels), blocksize
        self.sink = sink
        self.name = "virtual clock (no audio device)"
        self._buffer = np.zeros((blocksize, channels), np.float32)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames = 0  # frames rendered so far

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _block(self) -> np.ndarray:
        info = SimpleNamespace(outputBufferDacTime=self.frames / self.samplerate, currentTime=time.monotonic())
        self.callback(self._buffer, self.blocksize, info, None)
        self.frames += self.blocksize
        return self._buffer

    def run_blocks(self, blocks: int) -> np.ndarray:
        """Render `blocks` blocks now (no pacing); returns the output stream (blocks * blocksize, channels)."""
        if self.active:
            raise RuntimeError("run_blocks on a started VirtualStream")
        out = np.empty((blocks * self.blocksize, self.channels), np.float32)
        for b in range(blocks):
            out[b * self.blocksize : (b + 1) * self.blocksize] = self._block()
        return out

    def start(self) -> None:
        if self.active:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stemweave-virtual-audio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = self.blocksize / self.samplerate
        deadline = time.monotonic()
        while not self._stop.is_set():
            block = self._block()
            if self.sink is not None:
                self.sink(block)
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -1.0:  # fell far behind (machine suspended, debugger): do not race to catch up
                deadline = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)

    def close(self) -> None:
        self.stop()
