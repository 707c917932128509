"""Peak memory of a whole training step for AdamW, AdamW8bit and the Lion variants, and the largest
model of the GPT-2 width family each fits in a given memory.

    python benchmarks/memory.py [--quick] [--device cuda] [--memory-gb 8,16,24,80]

Model: transformers' GPT2LMHeadModel with GPT-2's vocabulary (50257) and context (1024), `--width`
wide and `--layers` deep, trained on random tokens (`--batch` sequences of `--seq-len`). For each
optimizer, in a fresh model: build the model and optimizer, then two training steps (forward,
backward, optimizer step, zero_grad(set_to_none=True)); the first creates the optimizer state.
Each optimizer's one-time work (compiling a fused kernel, building the AVX-512 kernel) is done
before, on scratch parameters, so it is not counted.

Measured (recipes/peak_memory.py: on CUDA the allocator's `max_memory_allocated`; on CPU the
profiler's events of every allocation and free of tensor storage, summed in time order):

* whole step peak: the most tensor memory live at once over the whole block (weights, gradients,
  optimizer state, activations, temporaries);
* bytes/param without activations: the most live during an optimizer step (weights, gradients,
  optimizer state and the step's temporaries; activations are freed by then), per parameter, split
  into weights and gradients (their dtype's size), state (`optimizer.state`'s tensors) and the rest,
  the step's temporaries.

"Largest model in N GB": the widest model of the GPT-2 width family (GPT-2 small's 12 layers,
vocabulary and context; widths in steps of 64, a head per 64) whose parameters x the measured
bytes/param without activations fit in N GB (10^9 bytes). Activations come on top; they depend on
batch and sequence length (and checkpointing), not on the optimizer. The step's temporaries are
assumed to grow with the parameters, which holds for AdamW's and Lion's per-tensor work only
roughly (the largest tensor, the embedding, grows with width only).

Writes outputs/memory.md (markdown table) and outputs/memory.png (bytes/param by component, and the
largest model per memory size).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine_line, markdown_table, pyplot, save_figure, write_report  # noqa: E402

from lion_integrations import Lion, Lion4bit, Lion8bit  # noqa: E402
from recipes.common import state_bytes_per_param  # noqa: E402
from recipes.peak_memory import MIB, PeakMemory  # noqa: E402

GPT2_VOCAB, GPT2_CONTEXT, GPT2_SMALL_LAYERS = 50257, 1024, 12
HEAD_WIDTH = 64
GB = 10**9
STEP_PHASE = "optimizer step"


def contenders(device: torch.device) -> list[tuple[str, torch.dtype, Callable | str]]:
    """(name, parameter dtype, optimizer factory or why there is none)."""
    found: list[tuple[str, torch.dtype, Callable | str]] = [
        ("AdamW (torch, fused)", torch.float32, lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=0.1, fused=True)),
    ]
    try:
        import bitsandbytes
    except Exception as error:  # not installed: `pip install -e .[bench]`
        found.append(("bitsandbytes AdamW8bit", torch.float32, f"not installed ({type(error).__name__})"))
    else:
        found.append(("bitsandbytes AdamW8bit", torch.float32,
                      lambda p: bitsandbytes.optim.AdamW8bit(p, lr=1e-4, weight_decay=0.1)))
    found += [
        ("Lion", torch.float32, lambda p: Lion(p, lr=1e-4, weight_decay=0.1)),
        ("Lion8bit", torch.float32, lambda p: Lion8bit(p, lr=1e-4, weight_decay=0.1)),
        ("Lion4bit", torch.float32, lambda p: Lion4bit(p, lr=1e-4, weight_decay=0.1)),
        ("Lion, bf16 weights and momentum", torch.bfloat16, lambda p: Lion(p, lr=1e-4, weight_decay=0.1)),
    ]
    if "kahan_sum" in inspect.signature(Lion).parameters:
        found.append(("Lion, bf16 weights + Kahan sum", torch.bfloat16,
                      lambda p: Lion(p, lr=1e-4, weight_decay=0.1, kahan_sum=True)))
    else:
        found.append(("Lion, bf16 weights + Kahan sum", torch.bfloat16, "this version of Lion has no kahan_sum"))
    return found


def gpt2(width: int, layers: int, device: torch.device | str, dtype: torch.dtype = torch.float32):
    """A GPT-2 of `width` and `layers` with GPT-2's vocabulary and context, a head per 64 of width."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=GPT2_VOCAB, n_positions=GPT2_CONTEXT, n_embd=width, n_layer=layers,
                        n_head=max(1, width // HEAD_WIDTH))
    with torch.device(device):
        model = GPT2LMHeadModel(config)
    return model.to(dtype)


def gpt2_parameters(width: int, layers: int = GPT2_SMALL_LAYERS) -> int:
    """Parameters of `gpt2(width, layers)` (the output layer shares the token embedding): per layer
    12 w^2 + 13 w (attention 4 w^2 + 4 w, MLP 8 w^2 + 5 w, two LayerNorms 4 w), plus the token and
    position embeddings and the final LayerNorm, (50257 + 1024 + 2) w."""
    return layers * (12 * width**2 + 13 * width) + (GPT2_VOCAB + GPT2_CONTEXT + 2) * width


def largest_width(budget_bytes: float, bytes_per_param: float, layers: int = GPT2_SMALL_LAYERS) -> int | None:
    """The largest width (a multiple of 64) whose parameters x `bytes_per_param` fit `budget_bytes`; None if none does."""
    width = None
    candidate = HEAD_WIDTH
    while gpt2_parameters(candidate, layers) * bytes_per_param <= budget_bytes:
        width, candidate = candidate, candidate + HEAD_WIDTH
    return width


def warm_up(factory: Callable, device: torch.device, dtype: torch.dtype) -> None:
    """Two steps on scratch parameters large enough for every fused path, so that compiling and
    kernel building happen outside the measurement."""
    params = [torch.nn.Parameter(torch.zeros(512, 512, device=device, dtype=dtype)) for _ in range(2)]
    optimizer = factory(params)
    for _ in range(2):
        for param in params:
            param.grad = torch.ones_like(param)
        optimizer.step()


def measure(factory: Callable, dtype: torch.dtype, args) -> dict:
    """Peaks of building a model and `factory`'s optimizer and taking two training steps."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(GPT2_VOCAB, (args.batch, args.seq_len), generator=generator).to(args.device)
    warm_up(factory, args.device, dtype)
    with PeakMemory(args.device) as peak:
        model = gpt2(args.width, args.layers, args.device, dtype)
        params = list(model.parameters())
        optimizer = factory(params)
        for _ in range(2):
            model(input_ids=tokens, labels=tokens).loss.backward()
            with peak.phase(STEP_PHASE):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    count = sum(p.numel() for p in params)
    element = torch.tensor([], dtype=dtype).element_size()
    without_activations = peak.phases[STEP_PHASE] / count
    state = state_bytes_per_param(optimizer, params)
    return dict(
        parameters=count, whole_step=peak.bytes, without_activations=without_activations,
        weights=element, gradients=element, state=state, temporaries=without_activations - 2 * element - state,
    )


def settings(args) -> None:
    """Fill in --width and --layers for a --quick or a full run where not given."""
    if args.width is None:
        args.width = 128 if args.quick else 256
    if args.layers is None:
        args.layers = 2 if args.quick else 4


def report(results: dict, args) -> str:
    budgets = args.memory_gb
    header = ["optimizer", "whole step peak MiB", "bytes/param without activations", "weights", "gradients",
              "optimizer state", "step temporaries", *[f"largest in {gb:g} GB" for gb in budgets]]
    rows = []
    for name, result in results.items():
        if isinstance(result, str):
            rows.append([name, *["-"] * (len(header) - 2), result])
            continue
        fits = []
        for gb in budgets:
            width = largest_width(gb * GB, result["without_activations"])
            fits.append("-" if width is None else f"{gpt2_parameters(width) / 1e9:.2f}B (width {width})")
        rows.append([name, f"{result['whole_step'] / MIB:.1f}", f"{result['without_activations']:.2f}",
                     f"{result['weights']:.2f}", f"{result['gradients']:.2f}", f"{result['state']:.2f}",
                     f"{result['temporaries']:.2f}", *fits])
    parameters = next((r["parameters"] for r in results.values() if isinstance(r, dict)), 0)
    how = ("CUDA allocator statistics (max_memory_allocated)" if args.device.type == "cuda" else
           "the profiler's allocation and free events of tensor storage (torch.profiler, profile_memory=True)")
    return "\n".join([
        f"# Peak memory of a training step ({'quick' if args.quick else 'full'} mode, {args.device.type})",
        "",
        f"{machine_line()}. GPT-2 shape, width {args.width}, {args.layers} layers, vocabulary {GPT2_VOCAB}: "
        f"{parameters / 1e6:.1f}M parameters; {args.batch} sequences of {args.seq_len} tokens. Measured with {how}: "
        "'whole step peak' over building the model and optimizer and two training steps; 'bytes/param without "
        "activations' is the peak during an optimizer step (weights, gradients, state, the step's temporaries) "
        "per parameter. 'Largest in N GB': the widest 12-layer GPT-2 (GPT-2 small's depth, vocabulary and "
        "context; widths in steps of 64) whose parameters x bytes/param without activations fit in N x 10^9 "
        "bytes; activations come on top and are the same for every optimizer.",
        "",
        markdown_table(header, rows),
    ])


def plot(results: dict, args, path: Path) -> None:
    """Bytes/param by component (stacked), and the largest model per memory size."""
    measured = {name: r for name, r in results.items() if isinstance(r, dict)}
    names = list(measured)
    figure, (parts_axis, fits_axis) = pyplot().subplots(1, 2, figsize=(13, 0.5 * len(names) + 2))
    left = [0.0] * len(names)
    for part, color in (("weights", "tab:gray"), ("gradients", "tab:olive"), ("state", "tab:blue"),
                        ("temporaries", "tab:orange")):
        values = [max(0.0, measured[name][part]) for name in names]
        parts_axis.barh(names, values, left=left, color=color, label=part)
        left = [a + b for a, b in zip(left, values)]
    parts_axis.invert_yaxis()
    parts_axis.set_xlabel("bytes per parameter, without activations")
    parts_axis.legend(fontsize=8)
    height = 0.8 / max(1, len(args.memory_gb))
    for index, gb in enumerate(args.memory_gb):
        sizes = []
        for name in names:
            width = largest_width(gb * GB, measured[name]["without_activations"])
            sizes.append(0.0 if width is None else gpt2_parameters(width) / 1e9)
        fits_axis.barh([i + index * height for i in range(len(names))], sizes, height=height, label=f"{gb:g} GB")
    fits_axis.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names)
    fits_axis.invert_yaxis()
    fits_axis.set_xlabel("largest 12-layer GPT-2 that fits, billions of parameters (activations excluded)")
    fits_axis.legend(fontsize=8)
    figure.suptitle(f"Training-step memory, GPT-2 width {args.width}, {args.layers} layers ({args.device.type})")
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict:
    parser = arguments(__doc__, "a narrower, shallower model (width 128, 2 layers)")
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    parser.add_argument("--width", type=int, default=None, help="model width (default 256; quick 128)")
    parser.add_argument("--layers", type=int, default=None, help="model depth (default 4; quick 2)")
    parser.add_argument("--batch", type=int, default=2, help="sequences a step (default 2)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens a sequence (default 128)")
    parser.add_argument("--memory-gb", type=lambda text: [float(v) for v in text.split(",")], default=[8, 16, 24, 80],
                        help="memory sizes for 'largest model that fits', GB (default 8,16,24,80)")
    args = parser.parse_args(argv)
    settings(args)
    results = {}
    for name, dtype, factory in contenders(args.device):
        if isinstance(factory, str):
            results[name] = factory
            continue
        try:
            results[name] = measure(factory, dtype, args)
        except Exception as error:
            results[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
        print(f"{name}: {results[name] if isinstance(results[name], str) else 'measured'}", flush=True)
    write_report(args.output_dir, "memory", report(results, args))
    plot(results, args, args.output_dir / "memory.png")
    return results


if __name__ == "__main__":
    main()
