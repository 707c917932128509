"""Step speed and state size of Lion8bit/Lion4bit against fp32 Lion's memory floor and bitsandbytes.

    python benchmarks/quant_speed.py [--quick] [--params 20000000]

Everything is measured in this run, on the same parameters (1024x1024 fp32 matrices with grads):

* the memory floor of an fp32 Lion step, as in step_speed.py: 20 bytes/param (read p, g, m; write
  p, m) at this machine's in-place bandwidth;
* step times of fp32 `Lion` (fused), `Lion8bit` and `Lion4bit` (fused: the AVX-512 kernel of
  lion_integrations.quantization.simd where the CPU has it, else torch.compile; the note says which),
  and bitsandbytes' `Lion8bit` when installed, each the fastest of interleaved rounds (see
  common.interleaved_seconds);
* optimizer state bytes per parameter.

Prints a markdown table of ratios (and writes it to outputs/quant_speed.md, with a bar plot in
outputs/quant_speed.png): step / floor, step / fp32 Lion's step, bitsandbytes' step / ours (how many
times faster), and state bytes/param.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    inplace_add, interleaved_seconds, machine_line, make_params, markdown_table, state_bytes_per_param, write_speed_report,
)

from lion_integrations import Lion, Lion4bit, Lion8bit  # noqa: E402
from lion_integrations.quantization import simd  # noqa: E402

LION_BYTES_PER_PARAM = 5 * 4


def contenders():
    yield "Lion (fp32 state, fused)", lambda p: Lion(p, lr=1e-4, weight_decay=0.1, fused=True)
    yield "Lion8bit (fused)", lambda p: Lion8bit(p, lr=1e-4, weight_decay=0.1, fused=True)
    yield "Lion4bit (fused)", lambda p: Lion4bit(p, lr=1e-4, weight_decay=0.1, fused=True)
    yield "Lion8bit (for-loop)", lambda p: Lion8bit(p, lr=1e-4, weight_decay=0.1, fused=False)
    try:
        import bitsandbytes
    except Exception as error:  # not installed: `pip install -e .[bench]`
        yield "bitsandbytes Lion8bit", f"not installed ({type(error).__name__})"
        return
    yield "bitsandbytes Lion8bit", lambda p: bitsandbytes.optim.Lion8bit(p, lr=1e-4, weight_decay=0.1)


FLOOR = "in-place add (bandwidth probe)"


def measure(total: int, rounds: int):
    """({contender: (fastest step seconds, state bytes/param), or why it has none}, floor seconds)."""
    results, steps, states = {}, {}, {}
    for name, factory in contenders():
        if isinstance(factory, str):
            results[name] = factory
            continue
        params = make_params(total)
        try:
            optimizer = factory(params)
            optimizer.step()
            steps[name], states[name] = optimizer.step, state_bytes_per_param(optimizer, params)
        except Exception as error:
            results[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
    add, add_bytes = inplace_add(total)
    timed = interleaved_seconds({FLOOR: add, **steps}, rounds)
    floor = LION_BYTES_PER_PARAM * total / (add_bytes / timed.pop(FLOOR))
    results.update({name: (seconds, states[name]) for name, seconds in timed.items()})
    return {name: results[name] for name, _ in contenders()}, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=20_000_000, help="parameters (default 20M)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 8 if args.quick else 20

    results, floor = measure(args.params, repeats)
    fp32 = results.get("Lion (fp32 state, fused)")
    bnb = results.get("bitsandbytes Lion8bit")
    reason = simd.unavailable_reason()
    fused_quantized_note = "AVX-512 kernel" if reason is None else f"torch.compile ({reason})"
    rows = []
    for name, result in results.items():
        if isinstance(result, str):
            rows.append([name, "-", "-", "-", "-", result])
            continue
        seconds, state = result
        rows.append([
            name,
            f"{seconds / floor:.2f}x",
            f"{seconds / fp32[0]:.2f}x" if isinstance(fp32, tuple) else "-",
            f"{bnb[0] / seconds:.1f}x" if isinstance(bnb, tuple) else "-",
            f"{state:.3f}",
            fused_quantized_note if "bit (fused)" in name else "",
        ])
    header = ["optimizer", "step / fp32 Lion floor", "step / fp32 Lion step", "bitsandbytes Lion8bit step / step",
              "state bytes/param", "note"]
    report = "\n".join([
        f"# Quantized-momentum step speed, {args.params / 1e6:.0f}M fp32 parameters ({machine_line()})",
        "",
        f"fp32 Lion floor: {LION_BYTES_PER_PARAM} bytes/param at the in-place bandwidth measured in this run; "
        f"fastest of {repeats} interleaved rounds each.",
        "",
        markdown_table(header, rows),
    ])
    write_speed_report(
        args.output_dir, "quant_speed", report, f"Quantized-momentum Lion, {args.params / 1e6:.0f}M params ({machine_line()})",
        results, floor, "step time / fp32 Lion memory floor (lower is faster)",
    )


if __name__ == "__main__":
    main()
