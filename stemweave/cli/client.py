"""`stemweave client separate | accompany | generate | status`: the direct commands, run by a `stemweave serve`.

The task subcommands take exactly the options of the direct ones (they are
registered by stemweave/cli/tasks.py itself), plus --server; files are read
and written here, the audio travels over the socket, and the server never
sees a path. The same seed, model and preset give the same stems as the
direct command.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from stemweave.cli import UserError

DEFAULT_STEMS = ("bass", "drums", "guitar", "piano")
SERVER_SIDE = {"device": "auto", "threads": None}  # direct options that are the server's business here


def register(subparsers) -> None:
    from stemweave.bridge.client import DEFAULT_ADDRESS
    from stemweave.cli import tasks

    p = subparsers.add_parser(
        "client", help="run separate / accompany / generate through a running `stemweave serve`",
        description="The direct task commands, run by a stemweave server (warm models, a job queue). Same options, "
        "same results for the same seed.")
    sub = p.add_subparsers(dest="client_command", metavar="TASK")
    tasks.register(sub)
    for name, runner in (("separate", run_separate), ("accompany", run_accompany), ("generate", run_generate)):
        _connection_options(sub.choices[name], DEFAULT_ADDRESS)
        sub.choices[name].add_argument("--priority", choices=("interactive", "batch"), default="interactive",
                                       help="interactive jobs overtake batch jobs in the server's queue")
        sub.choices[name].set_defaults(run=runner)
    status = sub.add_parser("status", help="the server's state, or a job's")
    status.add_argument("job", nargs="?", default=None, help="a job id (default: the whole server)")
    _connection_options(status, DEFAULT_ADDRESS)
    status.set_defaults(run=run_status)
    listing = sub.add_parser("list", help="the server's models, presets and tasks")
    _connection_options(listing, DEFAULT_ADDRESS)
    listing.set_defaults(run=run_list)


def _connection_options(p, default: str) -> None:
    group = p.add_argument_group("server connection")
    group.add_argument("--server", default=default, help="the server's address (default %(default)s)")
    group.add_argument("--server-key", default=None, help="the server's CURVE public key file or Z85 text")
    group.add_argument("--client-cert", type=Path, default=None, help="this client's CURVE key file (secret)")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds of server silence before giving up")


def _connect(args):
    from stemweave.bridge.client import Client

    for name, default in SERVER_SIDE.items():
        if getattr(args, name, default) != default:
            print(f"stemweave client: --{name} is the server's setting (`stemweave serve --{name}`); ignored here",
                  file=sys.stderr)
    return Client(args.server, timeout=args.timeout, server_key=args.server_key, client_cert=args.client_cert)


def _params(args, **region) -> dict:
    params = {k: getattr(args, k) for k in ("steps", "sigma_min", "sigma_max", "rho", "s_churn", "resamples")}
    params.update(overlap=args.overlap, batch_size=args.batch_size, **region)
    return {k: v for k, v in params.items() if v is not None}


def _accompanist_params(args, **region) -> dict:
    """A request's params by method (issue 21): the accompanist's controls (and its MIDI), or the prior's sampler
    and window options with method prior, so the server runs what the direct command would."""
    from stemweave.cli import tasks

    if tasks._method(args) == "prior":
        return {"method": "prior", **_params(args, **region)}
    controls = tasks._controls(args)  # the direct command's checks: a user error before any request
    params = {"method": "accompanist", "midi": True, "style": controls.style, "density": controls.density,
              "intensity": controls.intensity}
    for name in ("bpm", "meter", "key", "chords", "programs"):
        if getattr(controls, name) is not None:
            params[name] = getattr(controls, name)
    return {**params, **{k: v for k, v in region.items() if v is not None}}


def _write_midi(args, result, paths: dict, inputs) -> dict | None:
    """Each stem's MIDI beside its audio (an accompanist result's "midi" frame); None when the result has none."""
    import io

    import mido

    from stemweave.cli import tasks

    data = (result.files or {}).get("midi")
    if not data:
        return None
    midi = mido.MidiFile(file=io.BytesIO(data))
    midi_paths = {s: path.with_suffix(".mid") for s, path in paths.items()}
    tasks._never_overwrite(inputs, midi_paths.values())
    for stem, path in midi_paths.items():
        tasks._write_midi(path, midi, stem)
    return {s: str(p) for s, p in midi_paths.items()}


def _run(args, client, task, audio, rate, **kw) -> tuple[dict, object, float]:
    """Submit, show progress, wait; Ctrl-C cancels the job on the server."""
    from stemweave.bridge.client import ServerError, ServerGone
    from stemweave.cli.tasks import _ProgressBar

    bar = _ProgressBar(disable=args.no_progress)
    started = time.monotonic()
    try:
        job = client.submit(task, audio, rate, model=args.model, preset=args.preset, seed=args.seed,
                            priority=args.priority, **kw)
        try:
            stems = client.wait(job, on_progress=bar)
        except KeyboardInterrupt:
            client.cancel(job)
            raise
    except ServerGone as error:
        raise UserError(f"{error.message}") from None
    except ServerError as error:
        raise UserError(f"the server refused or failed the job ({error.code}): {error.message}") from None
    finally:
        bar.close()
    for warning in (client.last_result.info or {}).get("warnings", []):  # a model below the quality bar
        print(f"stemweave: warning: {warning}", file=sys.stderr)
    return stems, client.last_result, time.monotonic() - started


def _finish(args, task, base, stems, result, seconds, paths, rate, shape, inputs, **extra) -> None:
    from stemweave.cli import tasks
    from stemweave.engine.audio_io import write_json

    tasks._write(args, stems, paths, rate)
    write_json(args.out / f"{base}.stemweave.json", {
        "task": task, "inputs": [str(p) for p in inputs], "outputs": {s: str(p) for s, p in paths.items()},
        "server": args.server, "job": result.job, "cached": result.cached, "info": result.info,
        "seed": args.seed, "rate": rate, "channels": int(shape[0]), "frames": int(shape[1]), "format": args.format,
        "bit_depth": args.bit_depth, "seconds": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{k: v for k, v in extra.items() if v is not None}})
    print(f"wrote {len(paths)} stems to {args.out}", file=sys.stderr)


def run_separate(args) -> int:
    from stemweave.cli import tasks
    from stemweave.engine.audio_io import read_audio

    wanted = tasks._names(args.stems, "--stems")
    tasks._check_format(args)
    audio, rate = tasks._read(read_audio, args.input)
    tasks._prepare_out(args.out, [args.input])
    with _connect(args) as client:
        stems, result, seconds = _run(args, client, "separate", audio, rate,
                                      params=_params(args, stems=wanted, channel_mode=args.channel_mode))
    paths = {s: args.out / f"{args.input.stem}_{s}.{args.format}" for s in stems}
    tasks._never_overwrite([args.input], paths.values())
    _finish(args, "separate", args.input.stem, stems, result, seconds, paths, rate, audio.shape, [args.input],
            channel_mode=args.channel_mode)
    return 0


def run_accompany(args) -> int:
    from stemweave.cli import tasks
    from stemweave.engine.audio_io import read_audio

    tasks._check_format(args)
    given_names = tasks._names(args.given, "--given") or [tasks._stem_in_name(p, DEFAULT_STEMS) for p in args.inputs]
    if len(given_names) != len(args.inputs):
        raise UserError(f"--given names {len(given_names)} stems for {len(args.inputs)} files: one name per file")
    read = [tasks._read(read_audio, path) for path in args.inputs]
    if len({r for _, r in read}) != 1 or len({a.shape for a, _ in read}) != 1:
        raise UserError("the given files are not aligned: they need the same rate, channels and length")
    rate = read[0][1]
    regenerate = tasks._range(args.range, rate, read[0][0].shape[1])
    generate = tasks._names(args.generate, "--generate")
    if regenerate is not None:
        generate = generate or given_names[:1]
    tasks._prepare_out(args.out, args.inputs)
    given = {s: a for s, (a, _) in zip(given_names, read)}
    with _connect(args) as client:
        stems, result, seconds = _run(args, client, "accompany", None, rate, given=given,
                                      params=_accompanist_params(args, stems=generate, regenerate=None if regenerate
                                                                 is None else list(regenerate)))
    paths = tasks.accompany_paths(args.inputs[0], given_names[0], list(stems), args.out, args.format)
    tasks._never_overwrite(args.inputs, paths.values())
    midi = _write_midi(args, result, paths, args.inputs)
    _finish(args, "accompany", args.inputs[0].stem, stems, result, seconds, paths, rate, read[0][0].shape, args.inputs, given=given_names, midi=midi)
    return 0


def run_generate(args) -> int:
    from stemweave.cli import tasks

    tasks._check_format(args)
    if (args.loop_bars is None) != (args.bpm is None):
        raise UserError("a loop needs both --loop-bars N and --bpm T")
    rate, channels = tasks.output_format(args)
    accompanist = tasks._method(args) == "accompanist"
    if args.loop_bars is not None and args.preset is None and not accompanist:
        args.preset = tasks.LOOP_PRESET  # as the direct command (a server takes it for a generated loop)
    tasks._prepare_out(args.out, [])
    with _connect(args) as client:
        region = {"stems": tasks._names(args.stems, "--stems"), "channels": channels}
        if args.loop_bars is not None and accompanist:
            region["bars"] = args.loop_bars  # at --bpm, seamless at the wrap
        elif args.loop_bars is not None:
            region["loop_frames"] = int(round(args.loop_bars * tasks.BEATS_PER_BAR * 60.0 / args.bpm * rate))
        else:
            region["seconds"] = 10.0 if args.seconds is None else args.seconds
        stems, result, seconds = _run(args, client, "generate", None, rate, params=_accompanist_params(args, **region))
    base = args.name or ("loop" if args.loop_bars else "generated")
    paths = {s: args.out / f"{base}_{s}.{args.format}" for s in stems}
    midi = _write_midi(args, result, paths, [])
    _finish(args, "generate", base, stems, result, seconds, paths, rate, next(iter(stems.values())).shape, [],
            loop_bars=args.loop_bars, bpm=args.bpm, midi=midi)
    return 0


def run_status(args) -> int:
    from stemweave.bridge.client import ServerError

    with _connect(args) as client:
        try:
            print(json.dumps(client.status(args.job), indent=2))
        except ServerError as error:
            raise UserError(error.message) from None
    return 0


def run_list(args) -> int:
    from stemweave.bridge.client import ServerError

    with _connect(args) as client:
        try:
            print(json.dumps(client.list(), indent=2))
        except ServerError as error:
            raise UserError(error.message) from None
    return 0
