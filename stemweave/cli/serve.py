"""`stemweave serve`: the local inference server (bridge/server.py) that DAW plugins, scripts and controllers use."""

from __future__ import annotations

import sys
from pathlib import Path

from stemweave.cli import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run the local inference server (ZeroMQ; loopback by default)",
        description="Serve separate / accompany / generate jobs over ZeroMQ (docs/protocol.md). Models load once "
        "and stay warm; jobs run one at a time per device, interactive before batch; Ctrl-C or SIGTERM cancels "
        "running jobs, tells their clients and exits 0. Binding anything but loopback needs CURVE keys.")
    p.add_argument("--bind", default="tcp://127.0.0.1:5557",
                   help="ZeroMQ endpoint (default %(default)s; tcp://127.0.0.1:* picks a free port)")
    p.add_argument("--osc-port", type=int, default=None, help="also serve OSC control on this UDP port (loopback)")
    p.add_argument("--max-seconds", type=float, default=600.0,
                   help="refuse regions longer than this many seconds (default %(default)g)")
    p.add_argument("--max-job-mb", type=float, default=256,
                   help="refuse jobs whose audio (channels x frames x 4 bytes, at the region's rate or the model's, "
                   "whichever is larger) exceeds this many MiB: bounds memory per job, about 10x this while it runs "
                   "(default %(default)g: 600 s of 48 kHz stereo)")
    p.add_argument("--device", default="auto",
                   help="comma-separated devices, one inference worker each: auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (leave cores for the DAW)")
    p.add_argument("--preset-dir", type=Path, default=None, help="a folder of extra preset .toml files, by name")
    p.add_argument("--model", default=None,
                   help="the model jobs use when they name none (default: the direct commands' default)")
    p.add_argument("--no-preload", action="store_true", help="load models on first use instead of at start")
    p.add_argument("--curve-secret", type=Path, default=None,
                   help="the server's ZeroMQ CURVE secret key file, mode 600 (required to bind a non-loopback "
                   "address); needs --curve-clients DIR or --curve-any-client")
    p.add_argument("--curve-clients", type=Path, default=None,
                   help="a folder of the client public keys (*.key) allowed to connect (with --curve-secret)")
    p.add_argument("--curve-any-client", action="store_true",
                   help="with --curve-secret: accept any client that knows the server's public key (encryption "
                   "only, no client authentication)")
    p.add_argument("--make-keys", type=Path, default=None, metavar="DIR",
                   help="write a CURVE key pair (server.key, server.key_secret) and a client pair into DIR (created "
                   "0700; secret keys 0600; DIR/clients/ holds client.key for --curve-clients), and exit")
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats to clients with jobs")
    p.add_argument("--cache-mb", type=int, default=512, help="MiB of finished results kept for fetch and repeats")
    p.add_argument("--max-queue", type=int, default=64, help="most jobs waiting at once")
    from stemweave.bridge.osc import add_arguments as add_loop_arguments  # the loop engine's options (issue 7)

    p.add_argument("--backend", choices=("torch", "onnx", "torchscript", "auto"), default="torch",
                   help="where priors' networks run (default torch; onnx: ONNX Runtime, exported once into a cache)")
    add_loop_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from stemweave.bridge.server import Server, ServerError

    if args.make_keys is not None:
        return make_keys(args.make_keys)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        devices = _devices(args.device)
        loader = None
        if args.backend != "torch":
            import functools

            from stemweave.bridge.server import default_model_loader, shipped_model_names

            loader = functools.partial(default_model_loader, backend=args.backend)
        server = Server(args.bind, default_model=args.model, devices=devices, model_loader=loader,
                        model_names=shipped_model_names if loader else None, max_seconds=args.max_seconds,
                        preset_dir=args.preset_dir, curve_secret=args.curve_secret, curve_clients=args.curve_clients,
                        curve_any_client=args.curve_any_client, max_job_bytes=int(args.max_job_mb * (1 << 20)),
                        heartbeat_s=args.heartbeat, cache_bytes=args.cache_mb << 20, max_queue=args.max_queue,
                        preload=not args.no_preload, osc_port=args.osc_port)
    except ServerError as error:
        raise UserError(str(error)) from None
    if args.osc_port is not None:
        from stemweave.bridge.osc import options_from

        server.loop_options = options_from(args)  # read by bridge.osc.start through the --osc-port hook
    if args.model is not None and args.model not in server.model_names():
        raise UserError(f"--model {args.model}: not a model this server has ({', '.join(server.model_names())})")
    if server.public_key is not None:
        who = "any client with that key" if args.curve_any_client else f"only the clients in {args.curve_clients}"
        print(f"stemweave serve: CURVE encryption on; clients need the server public key "
              f"{server.public_key.decode()} ({who} may connect)", flush=True)
    print(f"stemweave serve: listening on {server.endpoint} (devices {', '.join(server.devices)}, "
          f"max {args.max_seconds:g} s per region); Ctrl-C to stop", flush=True)
    server.serve_forever()
    print("stemweave serve: stopped", flush=True)
    return 0


def _devices(value: str) -> list[str]:
    names = [d.strip() for d in value.split(",") if d.strip()]
    if names == ["auto"]:
        import torch

        return ["cuda"] if torch.cuda.is_available() else ["cpu"]
    return names


def make_keys(folder: Path) -> int:
    """Write server and client key pairs: secret keys 0600 from the start (umask), a new folder 0700, and the
    client's public key in DIR/clients/ ready for --curve-clients."""
    import os
    import shutil

    import zmq.auth

    clients = folder / "clients"
    for path in (folder / "server.key_secret", folder / "client.key_secret"):
        if path.exists():
            raise UserError(f"{path} exists: not overwriting keys")
    old_umask = os.umask(0o077)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        clients.mkdir(mode=0o700, exist_ok=True)
        server_public, server_secret = zmq.auth.create_certificates(str(folder), "server")
        client_public, client_secret = zmq.auth.create_certificates(str(folder), "client")
        for secret in (server_secret, client_secret):
            os.chmod(secret, 0o600)
        shutil.copyfile(client_public, clients / "client.key")
    except OSError as error:
        raise UserError(f"--make-keys {folder}: cannot write keys there: {error.strerror or error}") from None
    finally:
        os.umask(old_umask)
    print(f"wrote CURVE keys to {folder}: serve with --curve-secret {server_secret} --curve-clients {clients}; "
          f"give a client {server_public} (the server's public key) and {client_secret} (its own key); more clients' "
          "public .key files go into the clients folder", file=sys.stderr)
    return 0
