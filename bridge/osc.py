"""The OSC control surface: UDP on loopback by default, controlling the live loop engine (docs/osc.md).

Control only, no audio. Every message is validated here; a bad one gets
`/stemweave/error s:address s:message` back at the sender's address and
changes nothing. Handlers never return a value to python-osc (1.10 would send
it back as a reply and chokes on tuples): replies are sent explicitly from
the server's own socket, so they come from the port the controller sent to.

`stemweave serve --osc-port 9000` calls `start(server, port)`: the loop engine
then makes its loops through that server's job queue at interactive priority.
"""

from __future__ import annotations

import math
import re
import socket
import threading
from typing import Callable

from pythonosc import osc_packet
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import BlockingOSCUDPServer

PREFIX = "/stemweave"
DEFAULT_HOST = "127.0.0.1"
GAIN_PREFIX = "/stemweave/loop/gain/"
STEM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class BadMessage(ValueError):
    """A message the surface cannot act on; its text goes back to the sender."""


def _number(args: tuple, what: str) -> float:
    if len(args) != 1:
        raise BadMessage(f"{what} takes one number, got {len(args)} arguments")
    value = args[0]
    if isinstance(value, bool):  # OSC T/F arrive as bools
        raise BadMessage(f"{what} takes a number, got {value}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadMessage(f"{what} takes a number, got {value!r:.40}") from None
    if not math.isfinite(number):
        raise BadMessage(f"{what} takes a finite number, got {value}")
    return number


def _integer(args: tuple, what: str) -> int:
    number = _number(args, what)
    if number != int(number):
        raise BadMessage(f"{what} takes a whole number, got {number:g}")
    return int(number)


def _word(args: tuple, what: str) -> str:
    if len(args) != 1 or not isinstance(args[0], str):
        raise BadMessage(f"{what} takes one string")
    return args[0]


def _words(args: tuple, what: str) -> list[str]:
    """Strings as separate arguments (or one string the engine splits); none is an empty list."""
    if not all(isinstance(a, str) for a in args):
        raise BadMessage(f"{what} takes strings")
    return list(args)


def _stem_names(args: tuple) -> list[str]:
    """Stems as separate string arguments or in one string separated by spaces or commas; none means all."""
    names = []
    for value in args:
        if not isinstance(value, str):
            raise BadMessage(f"/stemweave/loop/stems takes stem names (strings), got {value!r:.40}")
        names += [n for n in re.split(r"[\s,]+", value) if n]
    for name in names:
        if not STEM_NAME.match(name):
            raise BadMessage(f"{name!r:.40} is not a stem name")
    return names


def _flatten(status: dict) -> list:
    """Status as flat key/value OSC arguments (strings, ints, floats)."""
    items = []
    for key, value in status.items():
        if isinstance(value, dict):
            items += [(f"{key}/{k}", v) for k, v in value.items()]
        else:
            items.append((key, value))
    flat = []
    for key, value in items:
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif value is None:
            value = ""
        elif not isinstance(value, (int, float, str)):
            value = str(value)
        flat += [key, value]
    return flat


def _message(address: str, args) -> bytes:
    builder = OscMessageBuilder(address)
    for value in args:
        builder.add_arg(value)
    return builder.build().dgram


class _Surface(Dispatcher):
    """Parses every packet itself (bundles included) and dispatches on exact addresses; never raises."""

    def __init__(self, control: "OscControl"):
        super().__init__()
        self.control = control

    def call_handlers_for_packet(self, data: bytes, client_address) -> list:
        try:
            messages = [m.message for m in osc_packet.OscPacket(data).messages]
        except Exception:  # noqa: BLE001 - ParseError and anything odd inside it
            self.control.reply(client_address, "/stemweave/error", ["", "not an OSC message or bundle"])
            return []
        for message in messages:
            self.control.handle(client_address, message.address, tuple(message.params))
        return []  # nothing for python-osc to send back


class _Server(BlockingOSCUDPServer):
    def verify_request(self, request, client_address) -> bool:
        return True  # everything reaches _Surface, so a datagram that is not OSC gets an error reply too


class OscControl:
    """The OSC server in front of a LoopEngine. start() serves in a thread; close() stops it."""

    def __init__(self, engine, host: str = DEFAULT_HOST, port: int = 9000, *, log: Callable[[str], None] = print):
        self.engine, self.log = engine, log
        self.server = _Server((host, int(port)), _Surface(self))
        self.address = self.server.server_address  # (host, port): port 0 picks a free one
        self._thread: threading.Thread | None = None
        self.handlers: dict[str, Callable[[tuple, tuple], None]] = {
            "/stemweave/loop/start": lambda sender, args: self._no_args(args, engine.start),
            "/stemweave/loop/stop": lambda sender, args: self._no_args(args, engine.stop),
            "/stemweave/loop/next": lambda sender, args: self._no_args(args, engine.next),
            "/stemweave/loop/capture": lambda sender, args: self._no_args(args, engine.capture),
            "/stemweave/loop/tempo": lambda sender, args: engine.set_tempo(_number(args, "/stemweave/loop/tempo")),
            "/stemweave/loop/bars": lambda sender, args: engine.set_bars(_integer(args, "/stemweave/loop/bars")),
            "/stemweave/loop/stems": lambda sender, args: engine.set_stems(_stem_names(args)),
            "/stemweave/loop/source": lambda sender, args: engine.set_source(_word(args, "/stemweave/loop/source")),
            "/stemweave/preset": lambda sender, args: engine.set_preset(_word(args, "/stemweave/preset")),
            "/stemweave/loop/method": lambda sender, args: engine.set_method(_word(args, "/stemweave/loop/method")),
            "/stemweave/loop/style": lambda sender, args: engine.set_style(_word(args, "/stemweave/loop/style")),
            "/stemweave/loop/density": lambda sender, args: engine.set_density(_number(args, "/stemweave/loop/density")),
            "/stemweave/loop/intensity": lambda sender, args:
                engine.set_intensity(_number(args, "/stemweave/loop/intensity")),
            "/stemweave/loop/key": lambda sender, args: engine.set_key(_word(args, "/stemweave/loop/key") if args else ""),
            "/stemweave/loop/chords": lambda sender, args: engine.set_chords(_words(args, "/stemweave/loop/chords")),
            "/stemweave/loop/midi": self._save_midi,
            "/stemweave/status": self._status,
        }

    @staticmethod
    def _no_args(args: tuple, action: Callable[[], None]) -> None:
        # Controllers often send a button's value (1 on press, 0 on release): act on anything but a release.
        if len(args) > 1:
            raise BadMessage("takes no arguments (or one button value)")
        if args and not isinstance(args[0], str) and args[0] in (0, False):
            return
        action()

    def start(self) -> "OscControl":
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="stemweave-osc", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(2)
        self.server.server_close()

    # Messages ------------------------------------------------------------------------------------------------
    def handle(self, sender: tuple, address: str, args: tuple) -> None:
        try:
            if address.startswith(GAIN_PREFIX):
                stem = address[len(GAIN_PREFIX):]
                if not STEM_NAME.match(stem):
                    raise BadMessage(f"{stem!r:.40} is not a stem name")
                self.engine.set_gain(stem, _number(args, address))
                return
            handler = self.handlers.get(address)
            if handler is None:
                raise BadMessage(f"unknown address (see docs/osc.md): {', '.join(sorted(self.handlers))}, "
                                 f"{GAIN_PREFIX}<stem>")
            handler(sender, args)
        except (BadMessage, ValueError) as error:
            self.reply(sender, "/stemweave/error", [address[:200], str(error)])
        except Exception as error:  # noqa: BLE001 - a bug must not take the surface down
            self.log(f"osc: {address}: internal error {error!r}")
            self.reply(sender, "/stemweave/error", [address[:200], f"internal error: {error}"])

    def _save_midi(self, sender: tuple, args: tuple) -> None:
        """Write the newest loop's MIDI into the render folder (an optional file name); reply with its path."""
        if len(args) > 1 or (args and not isinstance(args[0], str)):
            raise BadMessage("/stemweave/loop/midi takes no argument or one file name")
        path = self.engine.save_midi(args[0] if args else None)
        self.reply(sender, "/stemweave/loop/midi", [str(path)])

    def _status(self, sender: tuple, args: tuple) -> None:
        """Reply with the state: one /stemweave/status message of key/value pairs, then one
        /stemweave/status/<key> message per value (for controllers that bind a label to an address).
        An optional int argument names the port to reply to (at the sender's host)."""
        if args:
            port = _integer(args, "/stemweave/status")
            if not 1 <= port <= 65535:
                raise BadMessage(f"reply port must be 1..65535, got {port}")
            sender = (sender[0], port)
        flat = _flatten(self.engine.status())
        self.reply(sender, "/stemweave/status", flat)
        for key, value in zip(flat[::2], flat[1::2]):
            self.reply(sender, f"/stemweave/status/{key}", [value])

    def reply(self, to: tuple, address: str, args) -> None:
        try:
            self.server.socket.sendto(_message(address, args), to)
        except (OSError, ValueError) as error:  # the sender is gone, or an unsendable value: never fatal
            self.log(f"osc: could not reply to {to}: {error}")


# ---------------------------------------------------------------------------------------------------------------
# `stemweave serve` wiring


def add_arguments(parser) -> None:
    """The loop engine's options of `stemweave serve` (used with --osc-port)."""
    group = parser.add_argument_group("live loop (with --osc-port)")
    group.add_argument("--osc-host", default=DEFAULT_HOST, help="OSC listen address (default %(default)s)")
    group.add_argument("--audio-device", default=None,
                       help="sounddevice output device, index or name substring (default: the system default; "
                       "'virtual' for no audio)")
    group.add_argument("--audio-rate", type=int, default=48000, help="loop sample rate (default %(default)s)")
    group.add_argument("--render-dir", default=None,
                       help="write every loop to this folder (the mix and its stems); the way to hear loops on a "
                       "machine without a sound card")
    group.add_argument("--loop-input", default=None, help="an audio file to accompany (source input), e.g. drums")
    group.add_argument("--loop-input-stem", default="drums", help="which stem the input is (default %(default)s)")
    group.add_argument("--loop-input-device", default=None, help="record the input loop from this input device")
    group.add_argument("--midi-clock", default=None,
                       help="follow MIDI clock (tempo, start, stop) from this MIDI input port; virtual:NAME opens a "
                       "virtual port")


def options_from(args) -> dict:
    """The loop options from parsed `stemweave serve` arguments."""
    names = ("osc_host", "audio_device", "audio_rate", "render_dir", "loop_input", "loop_input_stem",
             "loop_input_device", "midi_clock")
    return {name: getattr(args, name, None) for name in names if getattr(args, name, None) is not None}


def start(server, port: int, **options) -> OscControl:
    """Start the loop engine and the OSC surface next to a running bridge.server.Server (its `--osc-port` hook).

    Loops are made through the server's own job queue at interactive priority, over loopback ZeroMQ (the
    server has no in-process submit yet). Options default to `server.loop_options` (set by `stemweave serve`).
    Both stop when the server stops."""
    from stemweave.bridge.loop import LoopEngine, Presets, QueueBackend

    options = {**getattr(server, "loop_options", {}), **options}
    log = getattr(server, "log", print)
    if getattr(server, "curve_clients", None):
        log("osc: the server admits only listed CURVE clients; the loop engine's own key is not among them, so its "
            "jobs will be refused: run the loop engine on a server without --curve-clients")
    backend = QueueBackend(_connect_address(server.endpoint), server_key=getattr(server, "public_key", None),
                           model=getattr(server, "default_model", None),
                           presets=Presets(getattr(server, "preset_dir", None)))
    input_loop = None
    if options.get("loop_input"):
        input_loop = _read_input(options["loop_input"], options.get("audio_rate", 48000))
    device = options.get("audio_device")
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    engine = LoopEngine(backend, rate=options.get("audio_rate", 48000), output=device,
                        render_dir=options.get("render_dir"), input_loop=input_loop,
                        input_stem=options.get("loop_input_stem", "drums"),
                        input_device=options.get("loop_input_device"), log=lambda text: log(text))
    if options.get("midi_clock"):
        try:
            engine.follow_midi_clock(options["midi_clock"])
            log(f"loop: following MIDI clock on {options['midi_clock']}")
        except ValueError as error:
            log(f"loop: {error}; tempo comes from OSC only")
    host = options.get("osc_host", DEFAULT_HOST)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"osc: listening on {host}: anyone who can reach it can control the loop (control only: no audio, "
            "no files); use a trusted network")
    if engine.settings.method == "accompanist":  # load the soundfont now, not when the first loop is asked for
        threading.Thread(target=_warm_accompanist, args=(engine.rate, log), name="stemweave-accompanist-warm",
                         daemon=True).start()
    control = OscControl(engine, host, port, log=log).start()
    log(f"OSC control on udp://{control.address[0]}:{control.address[1]} (docs/osc.md); loop audio: "
        f"{engine.output_name}")
    server.osc_control = control

    def close_when_stopped() -> None:
        stopped = getattr(server, "_stopped", None) or getattr(server, "_stop", None)
        if stopped is None:
            return
        stopped.wait()
        control.close()
        engine.close()

    threading.Thread(target=close_when_stopped, name="stemweave-osc-shutdown", daemon=True).start()
    return control


def _warm_accompanist(rate: int, log) -> None:
    from stemweave.bridge import accompanist_jobs

    try:
        log(f"loop: accompanist ready ({accompanist_jobs.warm(rate):.1f} s to load)")
    except Exception as error:  # noqa: BLE001 - the first loop will load it (and report what fails)
        log(f"loop: could not warm the accompanist: {error}")


def _connect_address(endpoint: str) -> str:
    """A connectable address for the server's bound endpoint (a wildcard host becomes loopback)."""
    scheme, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    if host in ("*", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{scheme}://{host}:{port}"


def _read_input(path: str, rate: int):
    from stemweave.engine.audio_io import read_audio
    from stemweave.engine.resample import resample

    audio, file_rate = read_audio(path)
    return audio if file_rate == rate else resample(audio, file_rate, rate)


def send(address: str, *args, host: str = DEFAULT_HOST, port: int = 9000, reply_timeout: float | None = None):
    """Send one OSC message (a tiny client for scripts and tests); with reply_timeout, return the replies
    [(address, args), ...] that arrive within it."""
    from pythonosc.osc_message import OscMessage

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(_message(address, args), (host, port))
        replies = []
        if reply_timeout is None:
            return replies
        sock.settimeout(reply_timeout)
        try:
            while True:
                data, _ = sock.recvfrom(65536)
                message = OscMessage(data)
                replies.append((message.address, list(message.params)))
                sock.settimeout(0.05)  # the rest of a reply follows at once
        except (socket.timeout, TimeoutError):
            pass
        return replies


__all__ = ["BadMessage", "OscControl", "add_arguments", "options_from", "send", "start"]
