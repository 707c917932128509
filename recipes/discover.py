"""Search for optimizers the way Lion was found (Chen et al. 2023), on a CPU.

    python recipes/discover.py                    # one CPU-hour (--budget-minutes 60)
    python recipes/discover.py --quick            # about 3 minutes
    python recipes/discover.py --budget-minutes 15 --out runs/discover
    python recipes/discover.py --tasks transformer  # stages where Lion beats the AdamW baseline

Regularized evolution starts from AdamW and scores children on the proxy suite (small MLPs on the
digits and on standard-library text); children that beat AdamW there go through the funnel (the same
data, ~10x the compute, other seeds) and are accepted only if they beat AdamW there too. At the end
the best accepted programs are simplified and evaluated on a held-out task (a deeper MLP predicting
characters of standard-library modules the search never saw). `--tasks transformer` uses small
transformers on the digits instead, the only stages measured in Lion's regime (tuned Lion beats the
baseline's AdamW there; docs/discovery.md): each program costs ~20x as much, so an hour evaluates under 1,000.

Every stage compares with AdamW (torch's, bias-corrected) tuned harder than any candidate: an lr grid
twice as dense over the same range, and decoupled weight decays {0, 0.01, 0.03, 0.1, 0.3, 1}. A stage's
score is the mean over its tasks of validation loss / tuned AdamW's (lower is better; below 1 beats
AdamW). The warm start (the paper's AdamW program: no bias correction, weight decay 0.01) and Lion
are printed for reference. Only programs the funnel accepted count as found; when none is, the best
proxy programs are still shown, marked "not accepted".
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lion_integrations.discovery import (  # noqa: E402
    Search, SearchConfig, Suite, is_lion_form, resolve_program, shortest_text, simplify,
)
from lion_integrations.discovery.baseline import ADAMW_WEIGHT_DECAYS, denser  # noqa: E402
from lion_integrations.discovery.tasks import SUITES, lr_grid  # noqa: E402

SIMPLIFY_TOLERANCE = 0.01  # relative score a low-effect simplification may cost, on the proxy and on the funnel
SIMPLIFY_EVALUATIONS = 20  # proxy evaluations the budget keeps for each final program's low-effect edits
PAPER_RATES = "the paper reports 69.8% redundant statements and an 89.1% cache-hit rate"


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="total wall-clock budget (default 60)")
    parser.add_argument("--quick", action="store_true", help="a ~3 minute run: short search, reduced funnel and held-out tasks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    parser.add_argument("--tasks", choices=tuple(SUITES), default="mlp",
                        help="the stages' tasks: small MLPs on digits and text (default), or small transformers "
                             "on the digits, where Lion beats the baseline's AdamW")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; more only adds contention)")
    parser.add_argument("--start", default="adamw", help="warm-start program: a builtin name, program text or a file")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--tournament", type=int, default=8)
    parser.add_argument("--max-statements", type=int, default=16)
    parser.add_argument("--restart-after", type=int, default=400, help="children without a new best before a restart")
    parser.add_argument("--top", type=int, default=3, help="programs simplified and evaluated on the held-out task")
    parser.add_argument("--out", type=Path, help="folder for results.json and the best programs' text")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_minutes = min(args.budget_minutes, 3.0)
    if not args.budget_minutes > 0:
        parser.error("--budget-minutes must be > 0")
    return args


def describe(result) -> str:
    parts = ", ".join(f"{name} {r.loss:.4f} @lr {r.lr:g}" for name, r in result.parts.items())
    verdict = "beats AdamW" if result.loss < 1 else "loses to AdamW"
    return f"{result.loss:.4f} x AdamW ({verdict}; {parts})"


def shape_of(program) -> str:
    """The program's short text with its constants blanked: programs differing only in constants share it."""
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "c", shortest_text(program))


def stage_specs(quick: bool = False, tasks: str = "mlp") -> dict[str, tuple]:
    """Task specs of each stage of `tasks` (a key of `SUITES`). `quick` keeps an MLP run near three
    minutes, the funnel's compute (parameters x steps) still at least 10x the proxy's on each task; for
    transformers it trains the funnel and held-out tasks on one seed and 3 lrs."""
    stages = SUITES[tasks]
    if not quick:
        return dict(stages)
    shorter = {"funnel": {"steps": 170}, "heldout": {"steps": 150, "hidden": (64,)}} if tasks == "mlp" else {}
    return {"proxy": stages["proxy"],
            **{name: tuple(replace(spec, seeds=spec.seeds[:1], lrs=lr_grid(-3.5, -1.5, 1), **shorter.get(name, {}))
                           for spec in stages[name])
               for name in ("funnel", "heldout")}}


def tune_adamw(stages: dict[str, Suite]) -> None:
    """Tune AdamW on every task (the references of every score) and print it."""
    decays = ", ".join(f"{wd:g}" for wd in ADAMW_WEIGHT_DECAYS)
    print(f"\nTuned AdamW (lr grid at 4 a decade x weight decay {{{decays}}}) per task:")
    for name, suite in stages.items():
        reference = suite.adamw()
        for task, result in reference.parts.items():
            decay, lrs = suite.reference_decays[task], denser(suite.tasks[task].spec.lrs)
            edge = [what for what, at_edge in (("lr", result.lr in (min(lrs), max(lrs))),
                                               ("weight decay", decay == max(ADAMW_WEIGHT_DECAYS))) if at_edge]
            note = f"  (best {' and '.join(edge)} at the edge of the grid)" if edge else ""
            print(f"  {name:8s} {task:8s} loss {result.loss:.4f} (acc {result.accuracy:.3f}) at lr {result.lr:g}, "
                  f"wd {decay:g}{note}")


def score_references(args: argparse.Namespace, stages: dict[str, Suite]) -> dict[str, dict]:
    """{label: {stage: score}} of the warm start and (but with --quick) Lion, printed."""
    start = resolve_program(args.start)
    references = {"warm start": start} if args.quick else {"warm start": start, "lion": resolve_program("lion")}
    print("\nReferences (score = mean loss / tuned AdamW's loss):")
    scores = {}
    for label, program in references.items():
        scores[label] = {name: suite.evaluate(program) for name, suite in stages.items()}
        for name, result in scores[label].items():
            print(f"  {label:10s} {name:8s} {describe(result)}")
    return scores


def search(args: argparse.Namespace, stages: dict[str, Suite], seconds: float):
    """Regularized evolution from --start for `seconds`, scored on the proxy stage, children that beat
    AdamW there checked on the funnel stage; prints its statistics and returns its `SearchResult`."""

    def funnel_check(program):
        result = stages["funnel"].evaluate(program)
        return result.loss, result.loss < 1.0

    config = SearchConfig(
        population=args.population, tournament=args.tournament, max_statements=args.max_statements,
        restart_after=args.restart_after,
    )
    print(f"\nRegularized evolution from {args.start!r} for {seconds / 60:.1f} min "
          f"(population {config.population}, tournament {config.tournament}, seed {args.seed}):")
    evolution = Search(lambda p: stages["proxy"].evaluate(p).loss, 1.0, config, args.seed, funnel_check, print)
    found = evolution.run(resolve_program(args.start), budget_seconds=seconds)
    stats = found.stats
    print(f"\nSearch: {stats.summary()}")
    print(f"  redundancy {100 * stats.redundancy:.1f}% of statements, cache-hit rate {100 * stats.cache_hit_rate:.1f}% "
          f"({PAPER_RATES})")
    print(f"  {len(found.accepted)} program(s) accepted by the funnel; best proxy score {found.best.loss:.4f}")
    return found


def near_equivalent(program, stages: dict[str, Suite], proxy_score, tolerance: float = SIMPLIFY_TOLERANCE,
                    deadline: float = math.inf):
    """`program` simplified with low-effect edits (each keeping its proxy score within `tolerance`; none
    evaluated after `deadline`, a `time.perf_counter()` value), or only exactly when those edits cost
    the funnel more than `tolerance` or its win over AdamW."""
    exact = simplify(program)
    near = simplify(program, proxy_score, tolerance=tolerance, deadline=deadline)
    if time.perf_counter() > deadline:
        print("  simplify: the budget ran out during the low-effect edits; keeping those made by then")
    if str(near) == str(exact):
        return exact
    near_funnel, exact_funnel = stages["funnel"].evaluate(near).loss, stages["funnel"].evaluate(exact).loss
    kept = near_funnel <= exact_funnel * (1 + tolerance) and (near_funnel < 1.0 or not exact_funnel < 1.0)
    if not kept:
        print(f"  simplify: low-effect edits would take the funnel score from {exact_funnel:.4f} to "
              f"{near_funnel:.4f}; keeping the exact simplification")
    return near if kept else exact


def final_programs(args: argparse.Namespace, stages: dict[str, Suite], found, deadline: float = math.inf) -> list:
    """Up to --top simplified programs for the held-out stage: accepted programs by funnel score, else
    the best proxy programs (reported as not accepted); one per shape (programs that differ only in
    constants count once). Low-effect edits stop at `deadline` (a `time.perf_counter()` value)."""
    if found.accepted:
        pool = [a.program for a in sorted(found.accepted, key=lambda a: a.funnel_loss)]
    else:
        pool = [member.program for member in found.top(10 * args.top)]
    proxy_score = lambda p: stages["proxy"].evaluate(p).loss  # noqa: E731
    finals, shapes = [], set()
    for program in pool:
        if len(finals) >= args.top:
            break
        simple = near_equivalent(program, stages, proxy_score, deadline=deadline)
        if shape_of(simple) in shapes:
            continue
        shapes.add(shape_of(simple))
        finals.append(simple)
    return finals


def report_programs(stages: dict[str, Suite], finals: list, found, warm: dict) -> list[dict]:
    """Score each final program again on every stage; print and return one entry per program."""
    print("\nBest programs, simplified and then evaluated again on every stage (so the scores can differ from "
          "the search's); score = mean validation loss / tuned AdamW's:")
    entries = []
    for rank, program in enumerate(finals, 1):
        scores = {name: suite.evaluate(program) for name, suite in stages.items()}
        labels = [label for label, on in (("Lion form", is_lion_form(program)),
                                          ("not accepted by the search's funnel", not found.accepted)) if on]
        print(f"\n#{rank} {'(' + '; '.join(labels) + ')' if labels else ''}")
        print("    " + shortest_text(program).replace("\n", "\n    "))
        for name, result in scores.items():
            print(f"  {name:8s} {describe(result)}; warm start {warm[name].loss:.4f}")
        entries.append({
            "text": str(program), "short": shortest_text(program), "lion_form": is_lion_form(program),
            "accepted": bool(found.accepted),
            **{name: {"score": r.loss, "beats_adamw": r.loss < 1.0, "beats_warm_start": r.loss < warm[name].loss,
                      "tasks": {task: {"loss": t.loss, "lr": t.lr} for task, t in r.parts.items()}}
               for name, r in scores.items()},
        })
    return entries


def report_findings(found, entries: list[dict], warm: dict) -> tuple[int, bool]:
    """Print whether a Lion-form program was found and how many accepted programs beat tuned AdamW on
    the held-out task; (that count, whether a Lion-form program was found)."""
    lion_forms = [key for key, program in found.programs.items() if is_lion_form(program)]
    lion_best = min((found.cache[key] for key in lion_forms), default=None)
    print(f"\nLion-form program (update = sign(interp(g, m, c1)), m = interp(g, m, c2)) found: "
          f"{'yes' if lion_forms else 'no'}", end="")
    print(f" ({len(lion_forms)} of {len(found.programs)} distinct programs evaluated; best proxy score {lion_best:.4f})"
          if lion_forms else f" (among {len(found.programs)} distinct programs evaluated)")
    accepted = [entry for entry in entries if entry["accepted"]]
    held = [entry for entry in accepted if entry["heldout"]["beats_adamw"]]
    held_warm = [entry for entry in held if entry["heldout"]["beats_warm_start"]]
    print(f"Accepted programs beating tuned AdamW on the held-out task: {len(held)} of {len(accepted)} "
          f"({len(held_warm)} also beat the warm start, whose held-out score is {warm['heldout'].loss:.4f})")
    return len(held), bool(lion_forms)


def write_results(out: Path, report: dict, finals: list) -> None:
    """results.json and program_<rank>.txt (each usable as DiscoveredOptimizer(program=path)) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    for rank, program in enumerate(finals, 1):
        (out / f"program_{rank}.txt").write_text(str(program) + "\n")
    print(f"Wrote {out}/results.json and program_*.txt (usable as DiscoveredOptimizer(program=path))")


def main(argv=None) -> dict:
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    stages = {name: Suite(specs) for name, specs in stage_specs(args.quick, args.tasks).items()}
    for name, suite in stages.items():
        print(f"{name}: {suite}")
    tune_adamw(stages)
    reference_scores = score_references(args, stages)

    # Leave time for the final stage, per program: its low-effect simplification (up to
    # SIMPLIFY_EVALUATIONS proxy evaluations, cut short at the deadline, then 2 funnel evaluations),
    # then one evaluation on every stage. A program evaluation costs what the warm start's did.
    seconds = {name: sum(part.seconds for part in result.parts.values())
               for name, result in reference_scores["warm start"].items()}
    scoring_seconds = args.top * (seconds["proxy"] + 3 * seconds["funnel"] + seconds["heldout"])
    final_seconds = scoring_seconds + args.top * SIMPLIFY_EVALUATIONS * seconds["proxy"]
    budget_seconds = 60.0 * args.budget_minutes
    search_seconds = max(budget_seconds - (time.perf_counter() - started) - final_seconds, 5.0)
    found = search(args, stages, search_seconds)
    finals = final_programs(args, stages, found, deadline=started + budget_seconds - scoring_seconds)

    stats = found.stats
    warm = reference_scores["warm start"]
    report = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "adamw": {name: {task: {"loss": r.loss, "accuracy": r.accuracy, "lr": r.lr} for task, r in suite.adamw().parts.items()}
                  for name, suite in stages.items()},
        "references": {label: {name: r.loss for name, r in scores.items()} for label, scores in reference_scores.items()},
        "search": {**vars(stats), "redundancy": stats.redundancy, "cache_hit_rate": stats.cache_hit_rate,
                   "accepted": len(found.accepted), "best_proxy": found.best.loss},
        "accepted": [{"text": str(a.program), "proxy": a.proxy_loss, "funnel": a.funnel_loss, "lion_form": is_lion_form(a.program)}
                     for a in sorted(found.accepted, key=lambda a: a.funnel_loss)],
        "programs": report_programs(stages, finals, found, warm),
    }
    report["found"], report["lion_form_found"] = report_findings(found, report["programs"], warm)
    report["minutes"] = (time.perf_counter() - started) / 60
    print(f"Total time {report['minutes']:.1f} min")
    if args.out:
        write_results(args.out, report, finals)
    return report


if __name__ == "__main__":
    main()
