"""How much a spectral head could add to a regression separator: oracle bounds on fixed validation windows.

The head (engine/spectral_head.py) keeps each stem's phase and re-mixes magnitudes per STFT bin, so its ceiling is
the true magnitudes on the U-Net's phases; the hard reassignment oracle sends each bin of each estimate wholly to
the stem it belongs to. Both next to the U-Net alone, Wiener filtering with the estimates, and the ratio mask at
the same STFT (n_fft 1024, hop 256 at 22.05 kHz). SI-SDRi in dB, silent references skipped; prints a table and
writes JSON with the command and the machine.

    python benchmarks/separator_head_bounds.py --data data/valid --windows 40 --json bounds.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import numpy as np
import torch
from stemweave.engine.data.datasets import fixed_windows
from stemweave.engine.metrics import is_silent, si_sdr_improvement
from stemweave.engine.models import load_separator

N_FFT, HOP = 1024, 256


def stft(audio: torch.Tensor) -> torch.Tensor:
    flat = torch.stft(audio.reshape(-1, audio.shape[-1]), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    return flat.reshape(*audio.shape[:-1], *flat.shape[-2:])


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    flat = torch.istft(spec.reshape(-1, *spec.shape[-2:]), N_FFT, HOP, window=torch.hann_window(N_FFT), length=length)
    return flat.reshape(*spec.shape[:-2], length)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="separator-cpu-small")
    p.add_argument("--data", default="data/valid")
    p.add_argument("--windows", type=int, default=40, help="3 s windows, one every 12 s of each song")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    separator = load_separator(args.model)
    head = separator.head
    separator.head = None  # the U-Net's own answer; the head is scored on its own row
    window = 65536
    stems = torch.from_numpy(np.stack([w for _, _, w in fixed_windows(args.data, window, hop=4 * window)][: args.windows]))
    mixture = stems.sum(1, keepdim=True)
    with torch.no_grad():
        estimate = torch.cat([separator(mixture[i : i + 8]) for i in range(0, len(mixture), 8)])
        rows = {"U-Net alone": estimate}
        if head is not None:
            separator.head = head
            rows["U-Net + its spectral head"] = torch.cat([separator(mixture[i : i + 8]) for i in range(0, len(mixture), 8)])
    est, mix, true = stft(estimate), stft(mixture), stft(stems)
    power = est.abs() ** 2
    rows["Wiener filter from the estimates"] = istft(power / power.sum(1, keepdim=True).clamp_min(1e-12) * mix, window)
    rows["magnitude ratio mask (oracle)"] = istft(true.abs() / true.abs().sum(1, keepdim=True).clamp_min(1e-8) * mix, window)
    true_power = true.abs() ** 2
    rows["power ratio mask (oracle)"] = istft(true_power / true_power.sum(1, keepdim=True).clamp_min(1e-12) * mix, window)
    rows["true magnitudes, mixture phase (oracle)"] = istft(true.abs() * torch.exp(1j * mix.angle()), window)
    rows["true magnitudes, estimates' phases (oracle)"] = istft(true.abs() * torch.exp(1j * est.angle()), window)
    # each estimate's bin goes wholly to the stem whose truth it projects on most (the hard reassignment oracle)
    belongs = (true.unsqueeze(2) * est.unsqueeze(1).conj()).real.argmax(1)  # (N, from, F, T) -> destination
    onehot = torch.nn.functional.one_hot(belongs, stems.shape[1]).permute(0, 4, 1, 2, 3).to(est.real.dtype)
    rows["hard reassignment of the estimates (oracle)"] = istft((onehot * est.unsqueeze(1)).sum(2), window)

    active = ~is_silent(stems.numpy())
    names = list(separator.stems)
    report = {"model": args.model, "data": args.data, "windows": len(stems), "seconds": window / 22050,
              "command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()} {platform.python_version()}",
              "si_sdri": {}}
    print(f"{'method':46s} " + " ".join(f"{n:>7s}" for n in names) + "  overall")
    for name, audio in rows.items():
        improvement = si_sdr_improvement(audio.numpy(), stems.numpy(), mixture.numpy())
        per_stem = [float(improvement[:, k][active[:, k]].mean()) for k in range(len(names))]
        report["si_sdri"][name] = dict(zip(names, per_stem), overall=float(np.mean(per_stem)))
        print(f"{name:46s} " + " ".join(f"{v:7.2f}" for v in per_stem) + f"  {np.mean(per_stem):7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
