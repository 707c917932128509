"""Step speed and state size of Lion8bit/Lion4bit against fp32 Lion's memory floor and bitsandbytes.

    python benchmarks/quant_speed.py [--quick] [--params 20000000] [--device cuda]

Everything is measured in this run, on the same parameters (1024x1024 fp32 matrices with grads):

* the memory floor of an fp32 Lion step, as in step_speed.py: 20 bytes/param (read p, g, m; write
  p, m) at this machine's in-place bandwidth;
* step times of fp32 `Lion` (fused), `Lion8bit` and `Lion4bit` (fused: the AVX-512 kernels of
  lion_integrations.avx512 and lion_integrations.quantization.simd where the CPU has them, else
  torch.compile; the note says which),
  and bitsandbytes' `Lion8bit` when installed, each the fastest of interleaved rounds (see
  common.interleaved_seconds);
* optimizer state bytes per parameter.

Prints a markdown table of ratios (and writes it to outputs/quant_speed.md, with a bar plot in
outputs/quant_speed.png): step / floor, step / fp32 Lion's step, bitsandbytes' step / ours (how many
times faster), and state bytes/param. With --device cuda everything runs on the GPU: the fused
quantized step is torch.compile's Triton kernel, and bitsandbytes runs its CUDA kernel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_device_argument, arguments, machine_line, measure_steps, ratio_table, speed_report_head, write_speed_report,
)

from lion_integrations import Lion, Lion4bit, Lion8bit, avx512  # noqa: E402
from lion_integrations.quantization import simd  # noqa: E402


def contenders() -> list[tuple[str, object]]:
    """(name, optimizer factory or why there is none) for fp32 Lion, our quantized paths and bitsandbytes'."""
    ours = [
        ("Lion (fp32 state, fused)", lambda p: Lion(p, lr=1e-4, weight_decay=0.1, fused=True)),
        ("Lion8bit (fused)", lambda p: Lion8bit(p, lr=1e-4, weight_decay=0.1, fused=True)),
        ("Lion4bit (fused)", lambda p: Lion4bit(p, lr=1e-4, weight_decay=0.1, fused=True)),
        ("Lion8bit (for-loop)", lambda p: Lion8bit(p, lr=1e-4, weight_decay=0.1, fused=False)),
    ]
    try:
        import bitsandbytes
    except Exception as error:  # not installed: `pip install -e .[bench]`
        return [*ours, ("bitsandbytes Lion8bit", f"not installed ({type(error).__name__})")]
    return [*ours, ("bitsandbytes Lion8bit", lambda p: bitsandbytes.optim.Lion8bit(p, lr=1e-4, weight_decay=0.1))]


def main() -> None:
    parser = arguments(__doc__, "fewer rounds")
    parser.add_argument("--params", type=int, default=20_000_000, help="parameters (default 20M)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_device_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 8 if args.quick else 20

    results, floor = measure_steps(contenders(), args.params, repeats, args.device)
    fp32 = results.get("Lion (fp32 state, fused)")
    bnb = results.get("bitsandbytes Lion8bit")

    def fused_note(name: str) -> str:
        if "fused" not in name:
            return ""
        if args.device.type == "cuda":
            return "torch.compile (Triton)"
        reason = (avx512 if name.startswith("Lion (") else simd).unavailable_reason()
        return "AVX-512 kernel" if reason is None else f"torch.compile ({reason})"

    def cells(seconds: float) -> list[str]:
        return [
            f"{seconds / floor:.2f}x",
            f"{seconds / fp32[0]:.2f}x" if isinstance(fp32, tuple) else "-",
            f"{bnb[0] / seconds:.1f}x" if isinstance(bnb, tuple) else "-",
        ]

    header = ["optimizer", "step / fp32 Lion floor", "step / fp32 Lion step", "bitsandbytes Lion8bit step / step",
              "state bytes/param", "note"]
    report = "\n".join([
        *speed_report_head("Quantized-momentum step speed", args.params, "fp32 Lion floor", repeats, args.device),
        ratio_table(header, results, cells, fused_note),
    ])
    write_speed_report(
        args.output_dir, "quant_speed", report,
        f"Quantized-momentum Lion, {args.params / 1e6:.0f}M params ({machine_line(args.device)})",
        results, floor, "step time / fp32 Lion memory floor (lower is faster)",
    )


if __name__ == "__main__":
    main()
