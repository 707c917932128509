"""Train with Hugging Face Accelerate and Lion8bit, checkpointing with save_state/load_state.

Offline: an MLP learns scikit-learn's bundled 8x8 digits (nothing is downloaded). Two CPU processes
(gloo) with Accelerate 1.15:

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no recipes/accelerate_finetune.py

(`accelerate launch --cpu --num_processes 2` starts ONE process in Accelerate 1.15: `--cpu` selects
the single-process launcher unless an mpirun hostfile is given. `--multi_gpu` launches through
torchrun, and ACCELERATE_USE_CPU=1 makes each process join a gloo group on the CPU; this script
also asks for the CPU itself when no GPU is present, so the variable is optional here.)

Interrupt and resume (the resumed run ends exactly where the uninterrupted one does):

    accelerate launch ... recipes/accelerate_finetune.py --stop_after 60    # saves checkpoint-60, exits
    accelerate launch ... recipes/accelerate_finetune.py --resume latest    # loads it, trains to --steps

(A new run refuses an --output_dir that holds another run's checkpoints, which `--resume latest`
would pick up: use a fresh --output_dir or --overwrite_output_dir.)

The same script runs single-process (`python recipes/accelerate_finetune.py`), on GPUs
(`accelerate launch --multi_gpu --num_processes 8 ...`) and under Accelerate's FSDP (see README:
Quantized momentum); `--optimizer lion_q4` or `lion` switch the optimizer.

Checkpoints (`accelerator.save_state`) hold the optimizer's quantized momentum as saved by
`Lion8bit.state_dict()`: uint8 codes and float32 block scales, about 1 byte a parameter. Batches are
indexed by step (a fixed shuffled order per epoch, split across processes), so a resumed run sees
exactly the batches the uninterrupted run would; `--steps` counts optimizer steps.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: this checkout's package

from lion_integrations import Lion, Lion4bit, Lion8bit  # noqa: E402
from lion_integrations.discovery.data import DIGITS_IMAGES, digits_split  # noqa: E402
from lion_integrations.hparams import param_groups  # noqa: E402

OPTIMIZERS = {"lion_q8": Lion8bit, "lion_q4": Lion4bit, "lion": Lion}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="lion_q8")
    parser.add_argument("--lr", type=float, default=1e-3, help="Lion learning rate (3-10x below AdamW's)")
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.99))
    parser.add_argument("--block_size", type=int, default=256, help="quantization block size (lion_q8/q4)")
    parser.add_argument("--min_quantized_size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps in all")
    parser.add_argument("--batch_size", type=int, default=64, help="global batch, split across processes")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--save_every", type=int, default=40, help="save_state every N steps (0: only at the end)")
    parser.add_argument("--stop_after", type=int, default=0, help="save and exit after N steps (an interruption)")
    parser.add_argument("--resume", default=None, help="a checkpoint directory, or 'latest' in --output_dir")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/accelerate_finetune"))
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="start a new run in an --output_dir that holds another run's checkpoints (deletes them)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def batch_indices(step: int, size: int, batch: int, seed: int) -> torch.Tensor:
    """The global batch of optimizer step `step`: consecutive slices of a per-epoch permutation."""
    per_epoch = size // batch
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * batch : (position + 1) * batch]


class Progress:
    """The step counter, saved and restored with the rest of the state by Accelerate."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def latest_checkpoint(output_dir: Path) -> Path:
    found = sorted(output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    if not found:
        raise ValueError(f"Invalid --resume latest: no checkpoint-* directory in {output_dir}")
    return found[-1]


def clear_other_runs(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """Refuse a new run in an --output_dir holding another run's checkpoints (a later --resume latest
    would pick them up), or delete them with --overwrite_output_dir."""
    old_checkpoints = sorted(args.output_dir.glob("checkpoint-*"))
    if not old_checkpoints or args.resume:
        return
    if not args.overwrite_output_dir:
        raise ValueError(
            f"Invalid --output_dir: {args.output_dir} holds checkpoints of another run "
            f"({', '.join(path.name for path in old_checkpoints)}); pass --resume, --overwrite_output_dir "
            "or a new --output_dir"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for path in old_checkpoints:
            shutil.rmtree(path)
    accelerator.wait_for_everyone()


def build_training(args: argparse.Namespace):
    """(model, optimizer, scheduler): an MLP 64-hidden-hidden-10 initialized from --seed, the chosen
    Lion variant (no weight decay on norms and biases), linear warmup over 10 steps and cosine decay to 0."""
    torch.manual_seed(args.seed)
    model = nn.Sequential(
        nn.Linear(64, args.hidden), nn.LayerNorm(args.hidden), nn.GELU(),
        nn.Linear(args.hidden, args.hidden), nn.GELU(), nn.Linear(args.hidden, 10),
    )
    options = dict(lr=args.lr, betas=tuple(args.betas))
    if args.optimizer != "lion":
        options.update(block_size=args.block_size, min_quantized_size=args.min_quantized_size)
    optimizer = OPTIMIZERS[args.optimizer](param_groups(model, args.weight_decay), **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps))
    )
    return model, optimizer, scheduler


def resume(args: argparse.Namespace, accelerator: Accelerator, progress: Progress) -> None:
    """Load the --resume checkpoint (`latest`: the highest step in --output_dir) into every prepared object."""
    checkpoint = latest_checkpoint(args.output_dir) if args.resume == "latest" else Path(args.resume)
    accelerator.load_state(str(checkpoint))
    accelerator.print(f"resumed from {checkpoint} at step {progress.step}")
    if progress.step >= args.steps:
        accelerator.print(f"{checkpoint} is at step {progress.step} already (--steps {args.steps}): nothing to train")


def train(args: argparse.Namespace, accelerator: Accelerator, model, optimizer, scheduler, progress: Progress,
          train_x: torch.Tensor, train_y: torch.Tensor) -> tuple[float | None, bool]:
    """Optimizer steps up to --steps, or to --stop_after; checkpoints every --save_every steps and at a
    stop. (the last step's training loss, or None if no step ran; whether it stopped early)."""

    def save() -> None:
        accelerator.save_state(str(args.output_dir / f"checkpoint-{progress.step}"))

    model.train()
    last_loss = None
    while progress.step < args.steps:
        index = batch_indices(progress.step, len(train_y), args.batch_size, args.seed)
        index = index.chunk(accelerator.num_processes)[accelerator.process_index]
        inputs, targets = train_x[index].to(accelerator.device), train_y[index].to(accelerator.device)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        progress.step += 1
        last_loss = loss.item()
        if progress.step % 20 == 0:
            accelerator.print(f"step {progress.step}: loss {last_loss:.4f}")
        if args.save_every and progress.step % args.save_every == 0:
            save()
        if args.stop_after and progress.step == args.stop_after:
            if not args.save_every or progress.step % args.save_every:
                save()
            accelerator.print(f"stopping after step {progress.step} (checkpoint-{progress.step})")
            return last_loss, True
    return last_loss, False


def evaluate(args: argparse.Namespace, accelerator: Accelerator, model, optimizer, progress: Progress,
             last_loss: float | None, valid_x: torch.Tensor, valid_y: torch.Tensor) -> dict:
    """The run's metrics: validation loss and accuracy, optimizer state bytes per parameter, and a
    checksum of the weights (the sum of every parameter), which a resumed run must reproduce."""
    model.eval()
    with torch.no_grad():
        logits = model(valid_x.to(accelerator.device))
        valid_loss = nn.functional.cross_entropy(logits, valid_y.to(accelerator.device)).item()
        accuracy = (logits.argmax(1).cpu() == valid_y).float().mean().item()
    unwrapped = accelerator.unwrap_model(model)
    inner = getattr(optimizer, "optimizer", optimizer)
    state_bytes = sum(
        value.numel() * value.element_size() for state in inner.state.values() for value in state.values()
        if isinstance(value, torch.Tensor)
    )
    return {
        "optimizer": args.optimizer,
        "processes": accelerator.num_processes,
        "steps": progress.step,
        "last_train_loss": last_loss,
        "valid_loss": valid_loss,
        "valid_accuracy": accuracy,
        "state_bytes_per_param": state_bytes / sum(p.numel() for p in unwrapped.parameters()),
        "weights_checksum": float(sum(p.detach().double().sum() for p in unwrapped.parameters())),
    }


def save_results(args: argparse.Namespace, accelerator: Accelerator, model, metrics: dict) -> None:
    """Print the metrics; the main process writes metrics.json and final_weights.pt to --output_dir."""
    accelerator.print(json.dumps(metrics))
    if accelerator.is_main_process:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        unwrapped = accelerator.unwrap_model(model)
        torch.save([p.detach().cpu() for p in unwrapped.parameters()], args.output_dir / "final_weights.pt")


def main(argv=None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    clear_other_runs(args, accelerator)
    set_seed(args.seed)
    (train_x, train_y), (valid_x, valid_y) = digits_split(int(0.8 * DIGITS_IMAGES), args.seed)
    if args.batch_size % accelerator.num_processes:
        raise ValueError(f"Invalid --batch_size: {args.batch_size} (must divide by {accelerator.num_processes} processes)")
    model, optimizer, scheduler = accelerator.prepare(*build_training(args))
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    if args.resume:
        resume(args, accelerator, progress)

    last_loss, stopped = train(args, accelerator, model, optimizer, scheduler, progress, train_x, train_y)
    if stopped:
        accelerator.wait_for_everyone()
        return {"stopped_at": progress.step}
    metrics = evaluate(args, accelerator, model, optimizer, progress, last_loss, valid_x, valid_y)
    save_results(args, accelerator, model, metrics)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group before the interpreter's teardown
    return metrics


if __name__ == "__main__":
    main()
