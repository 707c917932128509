"""Step speed of Lion's execution paths against the memory floor and against peer optimizers.

    python benchmarks/step_speed.py [--quick] [--params 20000000] [--device cuda]

Prints a markdown table of ratios measured in this run: step time / memory floor, where the floor is
the bytes an fp32 Lion step must move (read p, g, m; write p, m: 20 bytes a parameter) divided by
this machine's in-place bandwidth, and step time / the best peer's; and each optimizer's state bytes
per parameter. Lion's fused path runs the AVX-512 kernel on x86-64 CPUs that have it; it is also
timed as torch.compile's step (what CUDA and other CPUs run), with and without the non-finite
check (`finite_flags`), to give what the check costs on each. Writes the table to outputs/step_speed.md and a bar plot to outputs/step_speed.png. Every contender and the
bandwidth probe run in interleaved rounds; each keeps its fastest time. Then the first-step compile time
of the fused path, cold (empty Inductor and kernel caches) and warm (caches from the cold run), in seconds.
With --device cuda everything runs on the GPU: the fused path is torch.compile's Triton kernel, the
floor is the GPU's measured in-place bandwidth, and the peers run their CUDA paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

import lion_integrations.optimizer as optimizer_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_device_argument, arguments, machine_line, measure_steps, ratio_table, speed_report_head, write_speed_report,
)

from lion_integrations import Lion  # noqa: E402

FUSED = "lion_integrations fused"
COMPILED = "lion_integrations fused, torch.compile"
UNCHECKED = "lion_integrations fused, torch.compile, unchecked"


class CompiledStepLion(Lion):
    """Lion whose fused path is torch.compile's step even where the AVX-512 kernel runs."""

    def steps_in_kernel(self, group, batch):
        return [False] * len(batch[0])


class UncheckedLion(CompiledStepLion):
    """CompiledStepLion without the read of every gradient that finds NaN/inf (`finite_flags`):
    its step is the fused step before the check, so the difference is what the check costs."""

    def step(self, closure=None):
        screen = optimizer_module.finite_flags
        optimizer_module.finite_flags = lambda grads: [True] * len(grads)
        try:
            return super().step(closure)
        finally:
            optimizer_module.finite_flags = screen


def contenders() -> list[tuple[str, object]]:
    """(name, optimizer factory or why there is none) for each path of ours and each peer."""
    found = [
        (FUSED, lambda p: Lion(p, lr=1e-4, weight_decay=0.1, fused=True)),
        (COMPILED, lambda p: CompiledStepLion(p, lr=1e-4, weight_decay=0.1, fused=True)),
        (UNCHECKED, lambda p: UncheckedLion(p, lr=1e-4, weight_decay=0.1, fused=True)),
        ("lion_integrations foreach", lambda p: Lion(p, lr=1e-4, weight_decay=0.1, fused=False, foreach=True)),
        ("lion_integrations for-loop", lambda p: Lion(p, lr=1e-4, weight_decay=0.1, fused=False, foreach=False)),
    ]
    peers = [
        ("lion-pytorch Lion", "lion_pytorch", lambda m, p: m.Lion(p, lr=1e-4, weight_decay=0.1)),
        ("torch-optimi Lion", "optimi", lambda m, p: m.Lion(p, lr=1e-4, weight_decay=0.1)),
        ("pytorch_optimizer Lion", "pytorch_optimizer", lambda m, p: m.Lion(p, lr=1e-4, weight_decay=0.1)),
        ("bitsandbytes Lion32bit", "bitsandbytes", lambda m, p: m.optim.Lion32bit(p, lr=1e-4, weight_decay=0.1)),
        ("torch AdamW fused (2 states)", "torch", lambda m, p: m.optim.AdamW(p, lr=1e-4, fused=True)),
    ]
    for name, module_name, factory in peers:
        try:
            module = __import__(module_name)
        except Exception as error:  # not installed: `pip install -e .[bench]`
            found.append((name, f"not installed ({type(error).__name__})"))
            continue
        found.append((name, lambda p, module=module, factory=factory: factory(module, p)))
    return found


COMPILE_PROBE = textwrap.dedent(
    """
    import sys, time, torch
    from lion_integrations import Lion
    device = torch.device(sys.argv[1])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    params = [torch.nn.Parameter(torch.randn(512, 512, device=device)) for _ in range(4)]
    for p in params: p.grad = torch.randn_like(p)
    optimizer = Lion(params, fused=True)
    start = time.perf_counter(); optimizer.step(); sync(); first = time.perf_counter() - start
    start = time.perf_counter(); optimizer.step(); sync(); second = time.perf_counter() - start
    print(first - second)
    """
)


def measure_compile_seconds(device: torch.device) -> tuple[float, float]:
    """First-step overhead of the fused path in fresh processes: empty caches (Inductor's and the
    AVX-512 kernel's), then the same caches."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "LION_INTEGRATIONS_CACHE": cache}
        run = lambda: float(subprocess.run([sys.executable, "-c", COMPILE_PROBE, str(device)], env=env, check=True,
                                           capture_output=True, text=True).stdout.split()[-1])
        return run(), run()


def main() -> None:
    parser = arguments(__doc__, "fewer rounds")
    parser.add_argument("--params", type=int, default=20_000_000, help="parameters in the model (default 20M)")
    add_device_argument(parser)
    args = parser.parse_args()
    repeats = 8 if args.quick else 20

    steps, floor = measure_steps(contenders(), args.params, repeats, args.device)
    timed = {name: result[0] for name, result in steps.items() if isinstance(result, tuple)}
    lion_peers = [s for name, s in timed.items() if not name.startswith("lion_integrations") and "AdamW" not in name]
    best_peer = min(lion_peers) if lion_peers else None
    all_peers = [s for name, s in timed.items() if not name.startswith("lion_integrations")]

    def cells(seconds: float) -> list[str]:
        return [
            f"{seconds / floor:.2f}x",
            f"{seconds / best_peer:.2f}x" if best_peer else "-",
            f"{seconds / min(all_peers):.2f}x" if all_peers else "-",
        ]

    cold, warm = measure_compile_seconds(args.device)
    fused = timed.get(FUSED)
    check = (
        f"Non-finite check: the fused step with it / torch.compile's fused step without it (the step before "
        f"the check) = {fused / timed[UNCHECKED]:.2f}x; torch.compile's step with / without it = "
        f"{timed[COMPILED] / timed[UNCHECKED]:.2f}x." if all(name in timed for name in (FUSED, COMPILED, UNCHECKED)) else ""
    )
    header = ["optimizer", "step / memory floor", "step / best Lion peer", "step / best peer incl. AdamW",
              "state bytes/param", "note"]
    report = "\n".join([
        *speed_report_head("Optimizer step speed", args.params, "Memory floor", repeats, args.device),
        ratio_table(header, steps, cells),
        "",
        check,
        "",
        f"Fused path's first-call overhead (building the AVX-512 kernel, or torch.compile's): {cold:.1f} s cold, "
        f"{warm:.1f} s with the on-disk caches"
        + (f" (= {cold / fused:.0f} and {warm / fused:.0f} fused steps)" if fused else "") + ".",
    ])
    write_speed_report(
        args.output_dir, "step_speed", report,
        f"Optimizer step, {args.params / 1e6:.0f}M fp32 params ({machine_line(args.device)})",
        steps, floor, "step time / memory floor (lower is faster)",
    )


if __name__ == "__main__":
    main()
