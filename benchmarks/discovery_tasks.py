"""Which discovery tasks are in Lion's regime: tuned Lion against tuned AdamW on candidate proxy tasks.

    python benchmarks/discovery_tasks.py [--quick] [--only NAME ...] [--schedule cosine] [--layer-norm]
                                         [--model transformer] [--lion-betas B1 B2] [--adamw-beta2 B ...]
                                         [--adamw-weight-decays WD ...] [--output-dir benchmarks/results]

The program search (`lion_integrations.discovery`) can only find a sign-momentum program from an
AdamW warm start if Lion beats AdamW on its proxy and funnel tasks. This benchmark measures that
outside the search, with the search's own batched trainer, on a list of candidate `TaskSpec`s:
larger batches, more steps per parameter, wider and deeper MLPs, on the digits and on the
standard-library text (`discovery.data`).

Tuning, per task, with all 3 seeds trained at every grid point and the point with the lowest mean
validation loss chosen:

* AdamW: the search's baseline protocol (`baseline.tuned_adamw`): torch's bias-corrected AdamW
  (betas 0.9, 0.999) over the task's lr range at 4 lrs a decade, weight decays
  {0, 0.01, 0.03, 0.1, 0.3, 1}; `--adamw-beta2 0.999 0.95` tunes beta2 over those values too
  (transformers usually train with a beta2 below 0.999), `--adamw-weight-decays` widens the weight
  decays (when the chosen one is at the grid's edge).
* Lion: the builtin `lion` program (betas 0.9, 0.99) with decoupled weight decay (w <- w - update -
  lr * wd * w, as `DiscoveredOptimizer` applies it), 4 lrs a decade over the same range extended a
  decade down (the paper's Lion lr is 3-10x below AdamW's), weight decays 10x AdamW's
  {0, 0.1, 0.3, 1, 3, 10} (the paper's 3-10x larger). `--lion-betas` sets other betas.

Then each optimizer trains every seed alone at its chosen point. The table gives the validation
cross-entropy, mean ± sample standard deviation over the 3 seeds; Lion / AdamW of the means; and the
margin (AdamW mean - Lion mean) in units of the seed spread (the larger of the two standard
deviations). Lion is "in its regime" on a task when that margin is above 1 and Lion beats AdamW on
every seed (seeds share the initialisation and the minibatches between the optimizers). "edge" marks
a chosen lr or weight decay at the end of its grid. The cost column is the seconds one program
evaluation takes on the task's own grid (`TaskSpec.lrs` x 2 seeds, one thread), the unit of a
search's budget.

The search's tasks train at a constant lr and without normalization layers; `--schedule cosine`
(lr decaying to 0 over the run, as the paper's Lion runs train) and `--layer-norm` (each hidden
layer normalized before its ReLU, as transformers are) measure whether either moves a candidate
into Lion's regime. `--model transformer` runs small transformers instead (`discovery.models`: one
block of width 32 over the text's context characters or the digits' pixel rows), the family the
paper searched and reports Lion's largest gains on.

Writes <output-dir>/discovery_tasks[_transformer][_lion_B1_B2][_cosine][_layernorm].md (rewritten after every task, so
a cut-short run keeps its rows).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine_line, markdown_table, mean_and_spread, write_report  # noqa: E402

from lion_integrations.discovery import compile_program, resolve_program  # noqa: E402
from lion_integrations.discovery.baseline import ADAMW_LRS_PER_DECADE, ADAMW_WEIGHT_DECAYS, AdamWStep, denser  # noqa: E402
from lion_integrations.discovery.models import MODELS  # noqa: E402
from lion_integrations.discovery.tasks import FUNNEL, HELDOUT, PROXY, SCHEDULES, TaskSpec, lr_grid  # noqa: E402
from lion_integrations.discovery.training import Task, TaskResult  # noqa: E402

SEEDS = (0, 1, 2)
LION_WEIGHT_DECAYS = tuple(10 * wd for wd in ADAMW_WEIGHT_DECAYS)
LION_LR_DECADES_DOWN = 1.0
LION_BETAS = (0.9, 0.99)  # the builtin `lion` program's
ADAMW_BETA2 = 0.999  # the search's baseline's
TEXT_LRS = lr_grid(-3.5, -0.5)
DIGITS_LRS = lr_grid(-3.5, -1.0)
TRANSFORMER_LRS = lr_grid(-3.5, -1.0)


def candidates(model: str = "mlp") -> list[TaskSpec]:
    """MLPs: the current stages' tasks, then larger batches, more steps per parameter, wider and deeper
    MLPs; the last four push text2 further towards large batches and long training. Transformers
    (`discovery.models.Transformer`): the proxy tasks' data at larger batches and longer training."""
    digits, text = PROXY[0], PROXY[1]
    if model == "transformer":
        return [
            replace(text, name="text2 transformer b512", model="transformer", hidden=(32,), batch_size=512,
                    steps=150, lrs=TRANSFORMER_LRS),
            replace(digits, name="digits transformer b256", model="transformer", hidden=(32,), batch_size=256,
                    lrs=TRANSFORMER_LRS),
            replace(text, name="text2 ctx8 transformer b512 x300", model="transformer", hidden=(32,), context=8,
                    batch_size=512, steps=300, lrs=TRANSFORMER_LRS),
            replace(digits, name="digits transformer b64", model="transformer", hidden=(32,), batch_size=64,
                    lrs=TRANSFORMER_LRS),
            replace(digits, name="digits transformer b128", model="transformer", hidden=(32,), batch_size=128,
                    lrs=TRANSFORMER_LRS),
            replace(digits, name="digits transformer 2x32 b128", model="transformer", hidden=(32, 32),
                    batch_size=128, lrs=TRANSFORMER_LRS),
        ]
    return [
        replace(digits, name="digits (proxy now)"),
        replace(text, name="text2 (proxy now)"),
        replace(digits, name="digits b256", batch_size=256),
        replace(digits, name="digits b512 x300", batch_size=512, steps=300),
        replace(digits, name="digits b1200", batch_size=1200, steps=100),
        replace(digits, name="digits 128-128 b256", hidden=(128, 128), batch_size=256, steps=300, lrs=lr_grid(-4.0, -1.5)),
        replace(text, name="text2 b512", batch_size=512, steps=150, lrs=TEXT_LRS),
        replace(text, name="text2 b1024", batch_size=1024, steps=150, lrs=TEXT_LRS),
        replace(text, name="text2 b512 x400", batch_size=512, steps=400, lrs=TEXT_LRS),
        replace(text, name="text2 32-32 b512", hidden=(32, 32), batch_size=512, steps=150, lrs=TEXT_LRS),
        replace(text, name="text2 64 b512", hidden=(64,), batch_size=512, steps=150, lrs=TEXT_LRS),
        replace(text, name="text2 ctx8 b512", context=8, batch_size=512, steps=150, lrs=TEXT_LRS),
        replace(text, name="text2 b2048 x400", batch_size=2048, steps=400, lrs=TEXT_LRS),
        replace(text, name="text2 b1024 x800", batch_size=1024, steps=800, lrs=TEXT_LRS),
        replace(text, name="text2 64 b2048 x400", hidden=(64,), batch_size=2048, steps=400, lrs=TEXT_LRS),
        replace(text, name="text2 b4096 x300", batch_size=4096, steps=300, lrs=TEXT_LRS),
        replace(FUNNEL[1], name="text2 (funnel now)"),
        replace(HELDOUT, name="text (held-out now)"),
    ]


def with_weight_decay(step, weight_decay: float):
    """`step` followed by decoupled weight decay: the update gains lr * weight_decay * w."""

    def decayed(w, g, m, v, lr, norm):
        update, m, v = step(w, g, m, v, lr, norm)
        return update + lr * weight_decay * w, m, v

    return decayed


def adamw_step(weight_decay: float, beta2: float = ADAMW_BETA2):
    return AdamWStep((0.9, beta2), 1e-8, weight_decay)


def lion_program(betas: tuple[float, float] = LION_BETAS) -> str:
    """The builtin `lion` program's statements with momentum interpolations `betas` (beta1 for the
    update, beta2 for the momentum)."""
    beta1, beta2 = betas
    return (f"update = interp(g, m, {beta1}); update = sign(update); m = interp(g, m, {beta2}); "
            "update = update * lr")


def lion_step(weight_decay: float, betas: tuple[float, float] = LION_BETAS):
    return with_weight_decay(compile_program(lion_program(betas)), weight_decay)


def lion_lrs(spec: TaskSpec) -> tuple[float, ...]:
    """AdamW's grid density over the task's lr range extended `LION_LR_DECADES_DOWN` decades down."""
    low, high = math.log10(min(spec.lrs)), math.log10(max(spec.lrs))
    return lr_grid(low - LION_LR_DECADES_DOWN, high, ADAMW_LRS_PER_DECADE)


@dataclass
class Tuned:
    lr: float
    weight_decay: float
    lr_at_edge: bool
    decay_at_edge: bool
    seed_losses: list[float]
    beta2: float | None = None  # set when beta2 was tuned too

    def cell(self) -> str:
        mean, spread = mean_and_spread(self.seed_losses)
        edges = [what for what, on in (("lr", self.lr_at_edge), ("wd", self.decay_at_edge)) if on]
        note = f", {'+'.join(edges)} edge" if edges else ""
        beta2 = "" if self.beta2 is None else f", beta2 {self.beta2:g}"
        return f"{mean:.4f} ± {spread:.4f} (lr {self.lr:.3g}, wd {self.weight_decay:g}{beta2}{note})"


def tune(spec: TaskSpec, make_step, lrs: tuple[float, ...], weight_decays: tuple[float, ...],
         beta2s: tuple[float, ...] = ()) -> Tuned:
    """The (lr, weight decay) of the lowest mean validation loss over `spec.seeds`, and each seed's
    loss there, trained alone; with `beta2s`, over ``make_step(weight_decay, beta2=...)`` for each of
    them too."""
    task = Task(spec)
    steps = {(wd, beta2): functools.partial(make_step, wd, **({} if beta2 is None else {"beta2": beta2}))
             for beta2 in (beta2s or (None,)) for wd in weight_decays}
    results: dict[tuple, TaskResult] = {key: task.train(make(), lrs) for key, make in steps.items()}
    best = min(results, key=lambda key: results[key].loss)
    lr = results[best].lr
    seed_losses = [Task(replace(spec, seeds=(seed,))).train(steps[best](), (lr,)).loss for seed in spec.seeds]
    decay, beta2 = best
    return Tuned(lr, decay, lr in (min(lrs), max(lrs)), decay == max(weight_decays), seed_losses,
                 beta2 if len(beta2s) > 1 else None)


def program_seconds(spec: TaskSpec) -> float:
    """Seconds of one program evaluation on the task's own grid (its lrs x its first 2 seeds)."""
    task = Task(replace(spec, seeds=spec.seeds[:2]))
    task.evaluate(resolve_program("lion"))  # warm up
    return task.evaluate(resolve_program("lion")).seconds


def row(spec: TaskSpec, adamw: Tuned, lion: Tuned, seconds: float) -> list[str]:
    task = Task(spec)
    (adamw_mean, adamw_sd), (lion_mean, lion_sd) = mean_and_spread(adamw.seed_losses), mean_and_spread(lion.seed_losses)
    spread = max(adamw_sd, lion_sd, 1e-12)
    margin = (adamw_mean - lion_mean) / spread
    every_seed = all(lion_loss < adamw_loss for lion_loss, adamw_loss in zip(lion.seed_losses, adamw.seed_losses))
    verdict = "Lion's regime" if margin > 1 and every_seed else ("Lion ahead, within spread" if margin > 0 else "AdamW ahead")
    context = f", ctx {spec.context}" if spec.data != "digits" else ""
    return [spec.name, f"{spec.data}{context}, {model_label(spec)}", spec.batch_size, spec.steps, task.size,
            f"{spec.steps * spec.batch_size / task.size:.1f}", adamw.cell(), lion.cell(),
            f"{lion_mean / adamw_mean:.3f}", f"{margin:+.1f}", verdict, f"{seconds:.2f}"]


def model_label(spec: TaskSpec) -> str:
    """"MLP 32-32" (hidden widths), or "transformer 2 x 32" (blocks x width)."""
    if spec.model == "transformer":
        return f"transformer {len(spec.hidden)} x {spec.hidden[0]}"
    return f"MLP {'-'.join(map(str, spec.hidden))}"


def command(args) -> str:
    """The command line that gives this report (its options that are not the defaults)."""
    words = ["python benchmarks/discovery_tasks.py"]
    if args.quick:
        words.append("--quick")
    if args.only:
        words.append("--only " + " ".join(f'"{name}"' for name in args.only))
    if tuple(args.lion_betas) != LION_BETAS:
        words.append(f"--lion-betas {args.lion_betas[0]:g} {args.lion_betas[1]:g}")
    if args.schedule != "constant":
        words.append(f"--schedule {args.schedule}")
    if args.layer_norm:
        words.append("--layer-norm")
    if args.model != "mlp":
        words.append(f"--model {args.model}")
    if tuple(args.adamw_beta2) != (ADAMW_BETA2,):
        words.append("--adamw-beta2 " + " ".join(f"{beta2:g}" for beta2 in args.adamw_beta2))
    if tuple(args.adamw_weight_decays) != ADAMW_WEIGHT_DECAYS:
        words.append("--adamw-weight-decays " + " ".join(f"{wd:g}" for wd in args.adamw_weight_decays))
    return " ".join(words)


def report_stem(betas: tuple[float, float], schedule: str, layer_norm: bool, model: str = "mlp",
                adamw_beta2s: tuple[float, ...] = (ADAMW_BETA2,),
                adamw_weight_decays: tuple[float, ...] = ADAMW_WEIGHT_DECAYS) -> str:
    """The report's file name (without .md): what differs from the search's own setup is named."""
    stem = "discovery_tasks" + ("" if model == "mlp" else f"_{model}")
    if tuple(adamw_beta2s) != (ADAMW_BETA2,):
        stem += "_adamw_beta2_" + "_".join(f"{beta2:g}" for beta2 in adamw_beta2s)
    if tuple(adamw_weight_decays) != ADAMW_WEIGHT_DECAYS:
        stem += "_adamw_wd_" + "_".join(f"{wd:g}" for wd in adamw_weight_decays)
    if tuple(betas) != LION_BETAS:
        stem += f"_lion_{betas[0]:g}_{betas[1]:g}"
    if schedule != "constant":
        stem += f"_{schedule}"
    return stem + ("_layernorm" if layer_norm else "")


HEADER = ["task", "data, model", "batch", "steps", "params", "examples/param", "AdamW loss (tuned)",
          "Lion loss (tuned)", "Lion/AdamW", "margin/spread", "verdict", "s/program"]


def main(argv=None) -> None:
    parser = arguments(__doc__.split("\n\n")[0], "2 seeds and the first 4 candidates")
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--lion-betas", nargs=2, type=float, default=LION_BETAS, metavar=("BETA1", "BETA2"),
                        help="Lion's betas (default 0.9 0.99, the builtin program's); other values write "
                             "discovery_tasks_lion_<beta1>_<beta2>.md")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="the lr schedule of every candidate (default constant); cosine adds _cosine "
                             "to the file name")
    parser.add_argument("--layer-norm", action="store_true",
                        help="normalize every candidate's hidden pre-activations (adds _layernorm to the file name)")
    parser.add_argument("--model", choices=MODELS, default="mlp",
                        help="the candidates' model (default mlp); transformer runs the transformer candidates "
                             "and adds _transformer to the file name")
    parser.add_argument("--adamw-beta2", nargs="+", type=float, default=[ADAMW_BETA2], metavar="BETA2",
                        help="AdamW's beta2, tuned over these values too (default 0.999, the search baseline's); "
                             "others add _adamw_beta2_<values> to the file name")
    parser.add_argument("--adamw-weight-decays", nargs="+", type=float, default=list(ADAMW_WEIGHT_DECAYS), metavar="WD",
                        help="AdamW's weight decays (default the search baseline's 0 0.01 0.03 0.1 0.3 1); "
                             "others add _adamw_wd_<values> to the file name")
    parser.set_defaults(output_dir=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.layer_norm and args.model == "transformer":
        parser.error("--layer-norm is for MLPs: a transformer normalizes every block's input already")
    torch.set_num_threads(1)
    seeds = SEEDS[:2] if args.quick else SEEDS
    betas = tuple(args.lion_betas)
    adamw_beta2s = tuple(args.adamw_beta2)
    for beta2 in adamw_beta2s:
        if not 0.0 <= beta2 < 1.0:
            parser.error(f"--adamw-beta2: each value must be in [0, 1), got {beta2:g}")
    adamw_weight_decays = tuple(args.adamw_weight_decays)
    for weight_decay in adamw_weight_decays:
        if not 0.0 <= weight_decay < math.inf:
            parser.error(f"--adamw-weight-decays: each value must be a finite number >= 0, got {weight_decay:g}")
    stem = report_stem(betas, args.schedule, args.layer_norm, args.model, adamw_beta2s, adamw_weight_decays)
    specs = [replace(spec, seeds=seeds, schedule=args.schedule, layer_norm=args.layer_norm)
             for spec in candidates(args.model)]
    if args.only:
        specs = [spec for spec in specs if spec.name in args.only]
    elif args.quick:
        specs = specs[:4]
    head = (f"# Discovery tasks: tuned Lion against tuned AdamW, {len(seeds)} seeds\n\n{machine_line()}; "
            f"`{command(args)}`. Validation cross-entropy, mean ± sd over seeds "
            f"{', '.join(map(str, seeds))}; AdamW tuned over 4 lrs a decade x weight decays "
            f"{{{', '.join(f'{wd:g}' for wd in adamw_weight_decays)}}} x beta2 "
            f"{{{', '.join(f'{beta2:g}' for beta2 in adamw_beta2s)}}}, Lion over the same density a "
            f"decade lower x {{{', '.join(f'{wd:g}' for wd in LION_WEIGHT_DECAYS)}}}, betas {betas[0]:g}, {betas[1]:g}; "
            f"lr schedule {args.schedule}{', layer norm before each hidden ReLU' if args.layer_norm else ''}"
            f"{'; transformers normalize every block input' if args.model == 'transformer' else ''}. "
            f"margin/spread = "
            f"(AdamW mean - Lion mean) / the larger sd; \"Lion's regime\": above 1 and Lion ahead on every "
            f"seed. s/program: one program evaluated on the task's own lr grid x 2 seeds, one thread.\n\n")
    rows = []
    for spec in specs:
        begin = time.perf_counter()
        adamw = tune(spec, adamw_step, denser(spec.lrs), adamw_weight_decays, adamw_beta2s)
        lion = tune(spec, functools.partial(lion_step, betas=betas), lion_lrs(spec), LION_WEIGHT_DECAYS)
        rows.append(row(spec, adamw, lion, program_seconds(spec)))
        print(f"{spec.name}: {time.perf_counter() - begin:.0f} s", flush=True)
        write_report(args.output_dir, stem, head + markdown_table(HEADER, rows))


if __name__ == "__main__":
    main()
