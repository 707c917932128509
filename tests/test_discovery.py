"""Program discovery: parsing, ops, abstract execution and hashing, mutation, simplification,
the batched proxy trainer, the search, DiscoveredOptimizer (directly and through LightningCLI), and the recipe."""

from __future__ import annotations

import copy
import importlib.util
import math
import pickle
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lion_integrations import Lion
from lion_integrations.discovery import (
    BUILTIN, DiscoveredOptimizer, Program, Search, SearchConfig, Statement, analyze, compile_program,
    is_lion_form, mutate, parse, program_hash, prune, shortest_text, simplify,
)
from lion_integrations.discovery.evolution import SearchStats
from lion_integrations.discovery.execute import as_tensor_like
from lion_integrations.discovery.mutate import KINDS
from lion_integrations.discovery.simplify import _rounded, _variants
from lion_integrations.discovery.ops import OPS, TINY as OP_TINY
from lion_integrations.discovery.baseline import AdamWStep, tuned_adamw
from lion_integrations.discovery.data import stdlib_text
from lion_integrations.discovery.scoring import Suite
from lion_integrations.discovery.tasks import TINY, lr_grid
from lion_integrations.discovery.training import Task

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    """The proxy models are tiny: intra-op threads only add contention (20x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

LION = parse(BUILTIN["lion"])
ADAMW = parse(BUILTIN["adamw"])


def run_steps(program: Program | str, steps: int = 4, seed: int = 0, shape=(3, 5)) -> list[torch.Tensor]:
    """Weights after each of `steps` steps of `program` on a fixed random gradient stream (float64)."""
    step = compile_program(program)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    lr = torch.tensor(0.01, dtype=torch.float64)
    history = []
    for _ in range(steps):
        g = torch.randn(shape, generator=gen, dtype=torch.float64) + 0.1 * w
        update, m, v = step(w, g, m, v, lr)
        w = w - as_tensor_like(update, w)
        m, v = as_tensor_like(m, w), as_tensor_like(v, w)
        history.append(w.clone())
    return history


def same_trajectory(a, b, **steps) -> bool:
    """Equal weights wherever both runs are finite (inf - inf = nan can differ from an identity's result)."""
    for x, y in zip(run_steps(a, **steps), run_steps(b, **steps)):
        finite = torch.isfinite(x) & torch.isfinite(y)
        if not torch.allclose(x[finite], y[finite], rtol=1e-9, atol=1e-12):
            return False
    return True


# --------------------------------------------------------------------------------------------------
# program text


def test_text_round_trip_and_forms():
    for text in BUILTIN.values():
        program = parse(text)
        assert parse(str(program)) == program
        assert parse(program.one_line()) == program
    assert str(LION).splitlines()[0] == "def train(w, g, m, v, lr):"
    assert str(LION).splitlines()[-1] == "    return update, m, v"
    assert LION.statements[0] == Statement("update", "interp", ("g", "m", 0.9))
    # returns other than (update, m, v) survive both forms; negative constants parse as numbers
    odd = parse("u = g * -0.5\nreturn u, m, v")
    assert odd.outputs == ("u", "m", "v") and odd.statements[0].args == ("g", -0.5)
    assert parse(str(odd)) == odd == parse(odd.one_line())


def test_nested_expressions_flatten_to_the_same_data_flow():
    nested = parse("update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99)")
    assert len(nested) == 4  # t1 = interp, t2 = sign, update = t2 * lr, m = interp
    assert program_hash(nested) == program_hash(LION)
    assert same_trajectory(nested, LION)
    assert parse("update = (g + w) * lr").statements[0].op == "add"
    assert parse("update = -g * lr").statements[0] == Statement("t1", "sub", (0.0, "g"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("update = g *", "cannot parse program"),
        ("update = foo(g) * lr", "unknown op 'foo'"),
        ("update = sign(g, m)", "takes 1 argument"),
        ("update = q * lr", "reads 'q' before it is assigned"),
        ("x = g * lr", "returns 'update', which is never assigned"),
        ("update = g * lr\nreturn update, m", "three names"),
        ("def step(w, g, m, v, lr):\n    update = g\n    return update, m, v", "def train(w, g, m, v, lr)"),
        ("update = g[0]", "cannot parse expression"),
        ("update = g * lr\nif update: pass", "expected 'name = op(args)'"),
        ("return update, m, v\nupdate = g", "must be the last"),
        ("", "expected program text"),
        ("update = sign(g) * lr; sign = g * 2.0", "invalid target name 'sign'"),
        ("_op_sign = g * 2.0\nupdate = sign(_op_sign) * lr", "invalid target name '_op_sign'"),
    ],
)
def test_bad_program_text_raises_value_error_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        parse(text)


def test_programs_built_in_code_are_checked_too():
    with pytest.raises(ValueError, match="unknown op 'sinh'"):
        Program((Statement("update", "sinh", ("g",)),))
    with pytest.raises(ValueError, match="not a variable or a finite number"):
        Program((Statement("update", "mul", ("g", float("nan"))),))
    with pytest.raises(ValueError, match="invalid target name 'if'"):
        Program((Statement("if", "mul", ("g", 2.0)), Statement("update", "mul", ("g", 2.0))))


# --------------------------------------------------------------------------------------------------
# ops


def test_protected_ops_stay_finite_and_follow_their_math():
    x = torch.tensor([-4.0, -1e-30, 0.0, 2.0, 1e4])
    for op in OPS.values():
        args = [x] + [torch.flip(x, [0])] * (op.arity - 1)
        assert torch.isfinite(op.fn(*args)).all(), op.name
    assert torch.equal(OPS["sqrt"].fn(x), x.abs().sqrt())
    assert torch.equal(OPS["div"].fn(torch.ones(2), torch.tensor([0.0, -0.0])), torch.tensor([1 / OP_TINY, 1 / OP_TINY]))
    assert torch.allclose(OPS["interp"].fn(torch.tensor(2.0), torch.tensor(4.0), 0.25), torch.tensor(2.5))
    assert torch.equal(OPS["clip"].fn(x, -2.0), x.clamp(-2, 2))
    assert OPS["norm"].fn(torch.tensor([3.0, 4.0])).item() == 5.0


def test_compiled_program_folds_constants_and_broadcasts():
    step = compile_program("c = sqrt(4.0); c = c * 0.5; update = sign(g) * c * lr; v = norm(g)")
    g = torch.tensor([[-3.0, 4.0]])
    update, m, v = step(torch.zeros(1, 2), g, torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(0.1))
    assert torch.allclose(update, torch.tensor([[-0.1, 0.1]]))
    assert v.item() == pytest.approx(5.0)
    assert torch.equal(as_tensor_like(v, g), torch.full((1, 2), 5.0))


# --------------------------------------------------------------------------------------------------
# abstract execution and hashing


def test_validity_reasons():
    assert analyze(LION).valid and analyze(ADAMW).valid
    cases = {
        "update = w * lr": "does not depend on the gradient g",
        "update = norm(g) * lr": "is a scalar",
        "update = lr * 2.0": "is a scalar",
        "update = 2.0 + 1.0; update = update * g": None,
        "m = interp(g, m, 0.9); update = w * lr": "does not depend on the gradient g",
        "update = m * lr; m = interp(g, m, 0.9)": None,  # g reaches the update through the state m
        "update = exp(1000.0) * g": None,  # protected exp stays finite
        "c = 1e300 * 1e300; update = g * c": "not finite",
    }
    for text, reason in cases.items():
        analysis = analyze(parse(text))
        assert analysis.valid is (reason is None), text
        if reason:
            assert reason in analysis.reason and analysis.hash is None


def test_hash_is_invariant_to_form_and_sensitive_to_meaning():
    lion_variants = [
        # commuted operands, other temporaries, dead statements, a dead state v, no-op statements
        "t = interp(g, m, 0.9); t = sign(t); update = lr * t; m = interp(g, m, 0.99)",
        "x = w * 3.0; update = interp(g, m, 0.9); v = interp(g, v, 0.5); update = sign(update); "
        "update = update * 1.0; update = update + 0.0; m = interp(g, m, 0.99); update = update * lr",
        # m and v relabelled
        "update = interp(g, v, 0.9); update = sign(update); v = interp(g, v, 0.99); update = update * lr",
        "update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99); junk = update / m",
    ]
    for text in lion_variants:
        assert program_hash(parse(text)) == program_hash(LION), text
        assert same_trajectory(parse(text), LION), text
    different = [
        "update = interp(m, g, 0.9); update = sign(update); m = interp(g, m, 0.99); update = update * lr",
        "update = interp(g, m, 0.9); update = sign(update); m = interp(g, m, 0.98); update = update * lr",
        "update = interp(g, m, 0.9); update = sign(update); m = interp(g, m, 0.99); update = update / lr",
        "update = interp(g, m, 0.9); update = sign(update); m = interp(m, g, 0.99); update = update * lr",
    ]
    keys = {program_hash(parse(text)) for text in different}
    assert len(keys) == len(different) and program_hash(LION) not in keys


def test_a_state_that_is_never_written_folds_to_zero():
    program = parse("update = g + m; update = update * lr")  # m stays 0
    analysis = analyze(program)
    assert analysis.zero_states == {"m"} and analysis.hash == program_hash(parse("update = g * lr"))
    assert same_trajectory(program, "update = g * lr")


def test_liveness_counts_redundant_statements():
    program = parse(
        "a = w * 2.0\n"  # dead: never read
        "update = interp(g, m, 0.9)\n"
        "v = square(g)\n"  # dead state: the update never reads v
        "update = update * 1.0\n"  # no-op
        "update = sign(update) * lr\n"
        "m = interp(g, m, 0.99)"
    )
    analysis = analyze(program)
    assert analysis.live == (False, True, False, False, True, True, True)
    assert analysis.redundant == 3 and analysis.live_states == {"m"}
    pruned = prune(program, analysis)
    assert len(pruned) == 4 and analyze(pruned).redundant == 0 and program_hash(pruned) == analysis.hash


def _mutation_chains(seed: int, length: int) -> list[Program]:
    rng = random.Random(seed)
    program = rng.choice([LION, ADAMW, parse(BUILTIN["sgd_momentum"])])
    chain = []
    for _ in range(length):
        program = mutate(program, rng, max_statements=12)
        chain.append(program)
    return chain


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6))
def test_mutations_are_well_formed_and_hashes_mean_equal_updates(seed):
    """Every mutant round-trips through text; pruning keeps the hash and the weight trajectory;
    programs with equal hashes follow equal trajectories."""
    chain = _mutation_chains(seed, 12)
    by_hash: dict[str, Program] = {}
    for program in chain:
        assert parse(str(program)) == program and parse(program.one_line()) == program
        assert len(program) <= 12
        analysis = analyze(program)
        if not analysis.valid:
            continue
        pruned = prune(program, analysis)
        assert program_hash(pruned) == analysis.hash
        assert same_trajectory(program, pruned, steps=3)
        short = parse(shortest_text(simplify(program)))
        assert program_hash(short) == analysis.hash
        if analysis.hash in by_hash:
            assert same_trajectory(program, by_hash[analysis.hash], steps=3)
        by_hash[analysis.hash] = program


@pytest.mark.parametrize("kind", KINDS)
def test_each_mutation_kind(kind):
    rng = random.Random(1)
    for _ in range(30):
        child = mutate(ADAMW, rng, max_statements=12, kind=kind)
        assert child != ADAMW and parse(str(child)) == child
        if kind == "insert":
            assert len(child) == len(ADAMW) + 1
        elif kind == "delete":
            assert len(child) == len(ADAMW) - 1
        else:
            changed = [(a, b) for a, b in zip(ADAMW.statements, child.statements) if a != b]
            assert len(child) == len(ADAMW) and len(changed) == 1
            (before, after), = changed
            if kind == "perturb":
                assert before.op == after.op and before.target == after.target
                diffs = [(x, y) for x, y in zip(before.args, after.args) if x != y]
                assert len(diffs) == 1 and all(isinstance(z, float) for z in diffs[0])
                if before.op == "interp" and isinstance(before.args[2], float):
                    assert 0 < after.args[2] < 1
            elif kind == "modify_op":
                assert before.op != after.op
    with pytest.raises(ValueError, match="insert"):
        mutate(ADAMW, rng, max_statements=len(ADAMW), kind="insert")
    with pytest.raises(ValueError, match="unknown mutation 'swap'"):
        mutate(ADAMW, rng, kind="swap")


# --------------------------------------------------------------------------------------------------
# simplification and Lion's form


def test_simplify_removes_known_redundancy_exactly():
    redundant = parse(
        "x = w * 2.0\n"
        "c = 0.5 + 0.4\n"  # a constant statement: folded into its reader
        "u = interp(g, m, c)\n"
        "update = u + 0.0\n"  # a copy
        "v = interp(square(g), v, 0.999)\n"  # a state the update never reads
        "update = sign(update)\n"
        "update = update * 1.0\n"
        "m = interp(g, m, 0.99)\n"
        "update = update * lr\n"
        "x = x + update"
    )
    simple = simplify(redundant)
    assert shortest_text(simple) == "update = sign(interp(g, m, 0.9)) * lr\nm = interp(g, m, 0.99)"
    assert program_hash(simple) == program_hash(redundant) == program_hash(LION)
    assert shortest_text(simplify(ADAMW)) == (
        "m = interp(g, m, 0.9)\nv = interp(square(g), v, 0.999)\nupdate = (m / (sqrt(v) + 1e-08) + w * 0.01) * lr"
    )
    nested = parse("update = (g - m) - (w - lr)")
    assert shortest_text(nested) == "update = g - m - (w - lr)"  # parentheses only where they matter
    assert program_hash(parse(shortest_text(nested))) == program_hash(nested)


@pytest.mark.parametrize("copy", ["g * 1.0", "1.0 * g", "g / 1.0", "g - 0.0", "interp(g, g, 0.3)", "max(g, g)", "min(g, g)"])
def test_simplify_removes_statements_that_copy_an_argument(copy):
    redundant = parse(f"t = {copy}\nupdate = sign(interp(t, m, 0.9)) * lr\nm = interp(g, m, 0.99)")
    assert program_hash(redundant) == program_hash(LION)
    assert shortest_text(simplify(redundant)) == "update = sign(interp(g, m, 0.9)) * lr\nm = interp(g, m, 0.99)"


def test_simplify_with_a_task_keeps_only_statements_and_digits_that_matter():
    task = Task(replace(TINY, steps=25))
    cache = {}

    def evaluate(program):
        key = program_hash(program)
        if key not in cache:
            cache[key] = task.evaluate(program).loss
        return cache[key]

    noisy = parse(
        "update = interp(g, m, 0.9013)\n"
        "update = sign(update)\n"
        "update = clip(update, 37.5)\n"  # |update| = 1 < 37.5: no effect
        "m = interp(g, m, 0.9898)\n"
        "update = update * lr"
    )
    limit = evaluate(noisy) * 1.01
    simple = simplify(noisy, evaluate, tolerance=0.01)
    assert "clip" not in str(simple) and len(simple) < len(noisy) and evaluate(simple) <= limit
    # a fixpoint: dropping or bypassing any remaining statement, or rounding any constant further, costs > 1%
    for index in range(len(simple)):
        for variant in _variants(simple, index):
            assert len(variant) >= len(simple) or evaluate(variant) > limit
    for index, statement in enumerate(simple.statements):
        for position, arg in enumerate(statement.args):
            if isinstance(arg, float):
                for value in _rounded(arg, statement.op == "interp" and position == 2):
                    args = list(statement.args)
                    args[position] = value
                    statements = list(simple.statements)
                    statements[index] = Statement(statement.target, statement.op, tuple(args))
                    assert evaluate(Program(tuple(statements), simple.outputs)) > limit


def test_simplify_with_a_synthetic_loss_keeps_what_it_rewards():
    def loss(program):  # rewards a sign and reading lr, and a scale near 0.12
        ops = {s.op for s in prune(program).statements}
        reads_lr = any("lr" in s.args for s in prune(program).statements)
        scale = [c for c in program.constants() if c not in (5.0,)]
        return 1.0 + 0.5 * ("sign" not in ops) + 0.5 * (not reads_lr) + (abs(scale[0] - 0.12) if scale else 1.0)

    program = parse(
        "t = w * 2.0; update = sign(g); update = clip(update, 5.0); update = update * 0.1234; update = update * lr"
    )
    simple = simplify(program, loss, tolerance=0.01)
    assert shortest_text(simple) == "update = sign(g) * 0.12 * lr"  # 0.1 would cost 2%, 0.12 costs nothing
    assert loss(simple) == 1.0


def test_lion_form_detection():
    assert is_lion_form(LION)
    assert is_lion_form(parse("update = sign(interp(m, g, 0.1)) * lr + w * 0.01; m = interp(m, g, 0.02)"))
    assert is_lion_form(parse("update = sign(interp(g, v, 0.8)) * lr; v = interp(g, v, 0.95); m = g * 2.0"))
    assert not is_lion_form(ADAMW)
    assert not is_lion_form(parse("update = sign(interp(g, m, 0.9)) * lr"))  # m never updated
    assert not is_lion_form(parse("update = sign(m) * lr; m = interp(g, m, 0.99)"))
    assert not is_lion_form(parse("update = interp(g, m, 0.9) * lr; m = interp(g, m, 0.99)"))
    assert not is_lion_form(parse("update = sign(interp(g, m, lr)) * lr; m = interp(g, m, 0.99)"))
    # Sign-of-interpolation buried in something else is not Lion...
    assert not is_lion_form(parse(BUILTIN["adamw"] + "; s = sign(interp(g, m, 0.9)) * 1e-08; update = update + s"))
    assert not is_lion_form(parse("update = abs(sign(interp(g, m, 0.9))) * g * lr; m = interp(g, m, 0.99)"))
    assert not is_lion_form(parse("update = g * lr + sign(interp(g, m, 0.9)) * 0.0; m = interp(g, m, 0.99)"))
    assert not is_lion_form(parse("update = sign(interp(g, m, 0.9)) * lr * -1.0; m = interp(g, m, 0.99)"))  # ascent
    assert not is_lion_form(parse("update = sign(interp(g, m, 0.9)) * lr - w * 0.1; m = interp(g, m, 0.99)"))
    # ...while copies, reorderings and equivalent arithmetic of Lion are.
    assert is_lion_form(parse("t = interp(g, m, 0.99); update = sign(interp(g, m, 0.9)) * lr; m = t + 0.0"))
    assert is_lion_form(parse("u = m * 0.9 + g * 0.1; update = lr * sign(u) / 2.0; m = m * 0.99 + g * 0.01"))
    assert is_lion_form(parse("update = sign(g * -0.1 - m * 0.9) * (0.0 - lr); m = interp(g, m, 0.99)"))
    assert is_lion_form(parse("update = (sign(interp(g, m, 0.9)) + w * 0.3) * lr; m = interp(g, m, 0.99)"))


# --------------------------------------------------------------------------------------------------
# proxy tasks


def test_adamw_step_matches_torch_adamw():
    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64)
    param = torch.nn.Parameter(w.clone())
    reference = torch.optim.AdamW([param], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    step, m, v = AdamWStep((0.9, 0.999), 1e-8, 0.1), torch.zeros_like(w), torch.zeros_like(w)
    for _ in range(5):
        g = torch.randn_like(w)
        param.grad = g.clone()
        reference.step()
        update, m, v = step(w, g, m, v, 0.01)
        w = w - update
    assert torch.allclose(w, param.detach(), rtol=1e-10, atol=1e-12)


def test_batched_training_matches_an_ordinary_loop_with_discovered_optimizer():
    """One row of the batched trainer is exactly a model trained by DiscoveredOptimizer on its
    own parameter tensors (norm is per parameter tensor in both)."""
    spec = replace(TINY, steps=12, seeds=(3,))
    task = Task(spec)
    program = "n = norm(g); update = g / (n + 1.0); update = update + sign(interp(g, m, 0.8)); " \
              "update = update * lr; m = interp(g, m, 0.95)"
    lr = 0.003
    batched = task.train(compile_program(program), lrs=(0.001, lr, 0.01))
    alone = task.train(compile_program(program), lrs=(lr,))
    assert alone.losses[lr] == pytest.approx(batched.losses[lr], rel=1e-5)

    theta = task._init(3).unsqueeze(0)
    params = [t[0].clone().requires_grad_(True) for t in task._layers(theta)]
    optimizer = DiscoveredOptimizer(params, program=program, lr=lr)
    generator = torch.Generator().manual_seed(1003)
    data = task.data
    for _ in range(spec.steps):
        rows = torch.randint(len(data.train_y), (spec.batch_size,), generator=generator)
        logits = task._forward(torch.cat([p.reshape(1, -1) for p in params], 1), data.features(data.train[rows]).unsqueeze(0))
        loss = torch.nn.functional.cross_entropy(logits[0], data.train_y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = task._forward(torch.cat([p.reshape(1, -1) for p in params], 1), data.val)
        val = torch.nn.functional.cross_entropy(logits[0], data.val_y).item()
    assert val == pytest.approx(alone.losses[lr], rel=1e-4)


def test_task_fitness_is_deterministic_and_penalises_divergence():
    task = Task(TINY)
    first, second = task.evaluate(LION), task.evaluate(LION)
    assert first.losses == second.losses and first.lr in TINY.lrs
    assert first.loss == min(first.losses.values()) < math.log(10)
    diverging = task.evaluate("update = exp(g) * 1e30")
    assert diverging.loss == pytest.approx(task.penalty, rel=1e-6) and task.penalty == pytest.approx(2 * math.log(10))
    assert lr_grid(-3, -2) == (0.001, 0.00316228, 0.01)


def test_suite_scores_relative_to_tuned_adamw():
    suite = Suite((replace(TINY, name="a", steps=20), replace(TINY, name="b", steps=20, hidden=(8,), seeds=(4,))))
    reference = suite.adamw(weight_decays=(0.0, 0.1))
    assert reference.loss == 1.0 and set(reference.parts) == {"a", "b"} and set(suite.reference_decays.values()) <= {0.0, 0.1}
    result = suite.evaluate(LION)
    expected = sum(result.parts[n].loss / reference.parts[n].loss for n in "ab") / 2
    assert result.loss == pytest.approx(expected)
    assert result.parts["a"].losses == Task(replace(TINY, name="a", steps=20)).evaluate(LION).losses
    with pytest.raises(ValueError, match="at least one task"):
        Suite(())
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        Task(replace(TINY, data="mnist"))


def test_text_tasks_use_disjoint_standard_library_text():
    forward, backward = stdlib_text(20_000), stdlib_text(20_000, reverse=True)
    assert len(forward) == len(backward) == 20_000 and forward[:2000] not in backward
    task = Task(replace(TINY, data="text2", context=3, steps=5))
    assert task.data.dim == 3 * 48 and task.data.classes == 48
    assert task.evaluate(LION).loss < task.penalty


# --------------------------------------------------------------------------------------------------
# search


def test_short_seeded_search_is_reproducible_and_keeps_consistent_statistics():
    task = Task(replace(TINY, steps=25))
    baseline = tuned_adamw(task, weight_decays=(0.01,))[0].loss
    def funnel(program):
        return 0.0, True

    def run():
        search = Search(lambda p: task.evaluate(p).loss, baseline, SearchConfig(population=8, tournament=3, restart_after=15),
                        seed=7, funnel=funnel)
        return search.run(ADAMW, max_children=50)

    first, second = run(), run()
    stats = first.stats
    assert stats.children == 50 and stats.valid + stats.invalid == 50
    assert stats.cache_hits + stats.evaluations == stats.valid + 1  # +1: the warm start
    assert 0 < stats.redundancy < 1 and 0 < stats.cache_hit_rate < 1
    assert len(first.cache) == stats.evaluations
    assert first.best.loss <= first.cache[program_hash(ADAMW)]
    assert first.best.loss == min(first.cache.values())
    assert (first.best.key, vars(first.stats) | {"evaluation_seconds": 0, "funnel_seconds": 0}) == (
        second.best.key, vars(second.stats) | {"evaluation_seconds": 0, "funnel_seconds": 0})
    assert all(analyze(member.program).hash == member.key for member in first.top(5))


def test_selection_pressure_restarts_and_funnel_with_a_synthetic_fitness():
    """Fitness = live statements + 10 if the update has no sign: the search must find a short sign program."""
    def fitness(program):
        pruned = prune(program)
        return len(pruned) + (0 if any(s.op == "sign" for s in pruned.statements) else 10)

    accepted_when = lambda program: (fitness(program) - 1.0, fitness(program) <= 4)  # noqa: E731
    search = Search(fitness, baseline=19.0, config=SearchConfig(population=16, tournament=4, restart_after=60,
                                                                funnel_margin=0.0, funnel_step=0.0, funnel_share=1.0),
                    seed=3, funnel=accepted_when)
    result = search.run(ADAMW, max_children=1500)
    assert fitness(ADAMW) == 19 and result.best.loss <= 3
    assert result.accepted and all(a.funnel_loss <= 3 for a in result.accepted)
    assert result.stats.restarts >= 1 and result.stats.funnel_evaluations >= len(result.accepted)
    assert isinstance(result.stats, SearchStats) and "children" in result.stats.summary()
    with pytest.raises(ValueError, match="Invalid start program"):
        search.run(parse("update = w * lr"), max_children=1)


# --------------------------------------------------------------------------------------------------
# DiscoveredOptimizer


def _params(seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4))]


def test_lion_program_equals_the_lion_optimizer():
    ours, reference = _params(), _params()
    opt = DiscoveredOptimizer(ours, program="lion", lr=0.01, weight_decay=0.1)
    ref = Lion(reference, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, fused=False)
    for step in range(5):
        torch.manual_seed(100 + step)
        grads = [torch.randn_like(p) for p in ours]
        for p, q, grad in zip(ours, reference, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, reference):
        assert torch.allclose(p, q, atol=1e-6)
        assert torch.allclose(opt.state[p]["m"], ref.state[q]["exp_avg"], atol=1e-6)


def test_optimizer_state_dict_pickle_files_and_aliasing(tmp_path):
    path = tmp_path / "found.txt"
    path.write_text(str(ADAMW))
    params = _params()
    opt = DiscoveredOptimizer(params, program=str(path), lr=1e-3)
    assert opt.program == ADAMW and opt.defaults["program"] == str(ADAMW)
    params[0].grad, params[1].grad = torch.ones(6, 4), torch.ones(4)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.program == ADAMW
    restored = DiscoveredOptimizer(_params(), program="lion", lr=1.0)
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert restored.param_groups[0]["program"] == str(ADAMW) and restored.param_groups[0]["lr"] == 1e-3
    # a program that keeps the gradient itself as state: the state must not alias p.grad
    param = torch.nn.Parameter(torch.zeros(3))
    keep = DiscoveredOptimizer([param], program="update = g * lr\nreturn update, g, v", lr=0.1)
    param.grad = torch.tensor([1.0, -2.0, 3.0])
    keep.step()
    keep.zero_grad(set_to_none=False)
    assert torch.equal(keep.state[param]["m"], torch.tensor([1.0, -2.0, 3.0]))
    assert torch.allclose(param.detach(), torch.tensor([-0.1, 0.2, -0.3]))
    # param groups with their own program
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    groups = DiscoveredOptimizer([{"params": [a], "program": "sgd_momentum"}, {"params": [b]}], program="lion", lr=0.5)
    a.grad, b.grad = torch.full((2,), 4.0), torch.full((2,), 4.0)
    groups.step()
    assert torch.allclose(a.detach(), torch.full((2,), 1 - 0.5 * 0.4)) and torch.allclose(b.detach(), torch.full((2,), 0.5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"program": "nesterov"}, "not program text, a builtin name"),
        ({"program": "update = w * lr"}, "does not depend on the gradient"),
        ({"program": "update = tan(g)"}, "unknown op 'tan'"),
        ({"program": 3}, "Invalid program"),
        ({"lr": -1.0}, "Invalid lr"),
        ({"weight_decay": "x"}, "Invalid weight_decay"),
    ],
)
def test_optimizer_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiscoveredOptimizer(_params(), **{"program": "lion", **kwargs})


def _regression_net(pl, configure_optimizers=None):
    """A LightningModule fitting a 4 -> 1 linear layer to 16 fixed points (configure_optimizers as given)."""
    from torch.utils.data import DataLoader, TensorDataset

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def train_dataloader(self):
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
            return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    if configure_optimizers is not None:
        Net.configure_optimizers = configure_optimizers
    return Net


@pytest.mark.parametrize("way", ["configure_lion", "callback"])
def test_lightning_helpers_take_a_discovered_program(tmp_path, way):
    """configure_lion(optimizer_class=...) and LionCallback(optimizer_class=...) build DiscoveredOptimizer
    (which has no betas: its program holds its constants)."""
    pl = pytest.importorskip("lightning.pytorch")
    from lion_integrations.lightning import LionCallback, configure_lion

    def configure_optimizers(module):
        if way == "configure_lion":
            return configure_lion(module, lr=0.01, weight_decay=0.1, optimizer_class=DiscoveredOptimizer, program="lion")
        return torch.optim.AdamW(module.parameters(), lr=0.03, weight_decay=0.01)

    callbacks = [] if way == "configure_lion" else [
        LionCallback(optimizer_class="lion_integrations.discovery.DiscoveredOptimizer", optimizer_kwargs={"program": "lion"})]
    model = _regression_net(pl, configure_optimizers)()
    before = model.layer.weight.detach().clone()
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(model)
    (optimizer,) = trainer.optimizers
    assert type(optimizer) is DiscoveredOptimizer and program_hash(parse(optimizer.param_groups[0]["program"])) == program_hash(LION)
    assert [g["lr"] for g in optimizer.param_groups][0] == pytest.approx(0.01)  # AdamW's 0.03 / 3 for the callback
    assert not torch.equal(model.layer.weight.detach(), before)


def test_lightning_cli_takes_a_discovered_program(tmp_path):
    pytest.importorskip("jsonargparse")
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.cli import LightningCLI

    Net = _regression_net(pl)
    program = "update = sign(interp(g, m, 0.9)) * lr; m = interp(g, m, 0.99)"
    before = Net().layer.weight.detach().clone()
    cli = LightningCLI(Net, args=[
        "fit", "--optimizer", "lion_integrations.discovery.DiscoveredOptimizer", "--optimizer.program", program,
        "--optimizer.lr", "0.01", "--trainer.max_steps", "2", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", f"--trainer.default_root_dir={tmp_path}",
    ])
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is DiscoveredOptimizer and cli.trainer.global_step == 2
    assert program_hash(optimizer.program) == program_hash(LION)
    moved = (cli.model.layer.weight.detach() - before).abs()  # two sign steps of lr: 0.02 each, or 0 if they cancel
    assert torch.all(((moved - 0.02).abs() < 1e-6) | (moved < 1e-6)) and (moved > 0.01).any()


def test_hf_trainer_steps_a_discovered_optimizer(tmp_path):
    transformers = pytest.importorskip("transformers")

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x, labels=None):
            prediction = self.layer(x)
            return {"loss": torch.nn.functional.mse_loss(prediction, labels), "logits": prediction}

    generator = torch.Generator().manual_seed(0)
    examples = [{"x": x, "labels": x.sum(0, keepdim=True)} for x in torch.randn(16, 4, generator=generator)]
    model = Regression()
    before = model.layer.weight.detach().clone()
    optimizer = DiscoveredOptimizer(model.parameters(), program=BUILTIN["lion"], lr=0.01)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, learning_rate=0.01,
        lr_scheduler_type="constant", save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples, optimizers=(optimizer, None))
    trainer.train()
    assert trainer.optimizer.optimizer is optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer is optimizer
    moved = (model.layer.weight.detach() - before).abs()  # three sign steps of 0.01 (some may cancel)
    assert trainer.state.global_step == 3 and (moved > 0.005).any()
    assert torch.all(torch.isclose(moved * 100, moved.mul(100).round(), atol=1e-4))


# --------------------------------------------------------------------------------------------------
# recipe


def _recipe():
    spec = importlib.util.spec_from_file_location("discover_recipe", REPO / "recipes" / "discover.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


@pytest.mark.parametrize("quick", [False, True])
def test_funnel_is_at_least_ten_times_the_proxy(quick):
    """Each funnel task costs >= 10x its proxy task (parameters x training steps), in both modes."""
    stages = _recipe().stage_specs(quick)
    proxy = {spec.data: spec for spec in stages["proxy"]}
    for spec in stages["funnel"]:
        cost = Task(spec).size * spec.steps
        assert cost >= 10 * Task(proxy[spec.data]).size * proxy[spec.data].steps, spec


def test_search_config_and_run_reject_bad_input():
    for kwargs, message in [({"population": 0}, "Invalid population: 0"), ({"tournament": 0}, "Invalid tournament: 0"),
                            ({"population": 4, "tournament": 8}, "Invalid tournament: 8"),
                            ({"funnel_share": 2.0}, "Invalid funnel_share: 2.0")]:
        with pytest.raises(ValueError, match=message):
            SearchConfig(**kwargs)
    search = Search(lambda p: 1.0, 1.0, SearchConfig(max_statements=4))
    with pytest.raises(ValueError, match="Invalid max_statements: 4 is below the start program's 9 statements"):
        search.run(ADAMW, max_children=1)
    with pytest.raises(ValueError, match="Invalid budget"):
        search.run(parse(BUILTIN["lion"]))
    with pytest.raises(ValueError, match="Invalid max_children: -1"):
        search.run(parse(BUILTIN["lion"]), max_children=-1)


def test_funnel_sees_the_best_of_each_round_once():
    """After a restart from an accepted program, the round's bests reach the funnel even when they do
    not beat the global best; no program is funneled twice."""
    losses = iter([1.0, 0.85, 0.7, 0.9, 0.9, 0.9, 0.8] + [0.95] * 100)
    proxy = {}

    def evaluate(program):
        proxy[program_hash(program)] = loss = next(losses)
        return loss

    funneled = []

    def funnel(program):
        loss = proxy[program_hash(program)]
        funneled.append(loss)
        return loss, loss != 0.7  # the global proxy best fails the funnel

    config = SearchConfig(population=4, tournament=2, restart_after=3, funnel_margin=0.0, funnel_step=0.0, funnel_share=1.0)
    result = Search(evaluate, 1.0, config, seed=0, funnel=funnel).run(ADAMW, max_children=30)
    assert result.stats.restarts >= 1 and result.best.loss == 0.7
    assert funneled[:3] == [0.85, 0.7, 0.8]
    assert [a.proxy_loss for a in result.accepted][:2] == [0.85, 0.8]


def test_restarts_grow_from_the_program_that_did_best_on_the_funnel():
    """With nothing accepted, a restart seeds the population with the funnel's best-scored program,
    not the proxy best (which failed the funnel, as over-fitted proxy winners do)."""
    proxy, funnel_losses = {}, {0.85: 1.02, 0.7: 1.2}
    losses = iter([1.0, 0.85, 0.7] + [0.9] * 200)

    def evaluate(program):
        proxy[program_hash(program)] = loss = next(losses)
        return loss

    def funnel(program):
        loss = proxy[program_hash(program)]
        return funnel_losses.get(loss, 1.5), False

    messages = []
    config = SearchConfig(population=4, tournament=2, restart_after=5, funnel_margin=0.0, funnel_step=0.0, funnel_share=1.0)
    search = Search(evaluate, 1.0, config, seed=0, funnel=funnel, log=messages.append)
    result = search.run(ADAMW, max_children=40)
    restarts = [m for m in messages if "restart" in m]
    assert restarts and all("best funnel-scored" in m for m in restarts)
    assert result.best.loss == 0.7 and not result.accepted
    funnel_best = min(search.funneled, key=lambda key: search.funneled[key][0])
    assert proxy[funnel_best] == 0.85


def test_recipe_runs_end_to_end_on_tiny_tasks(tmp_path, monkeypatch, capsys):
    recipe = _recipe()
    monkeypatch.setattr(recipe, "PROXY", replace(TINY, steps=20))
    monkeypatch.setattr(recipe, "FUNNEL", replace(TINY, name="funnel", steps=30, seeds=(5,)))
    monkeypatch.setattr(recipe, "HELDOUT", replace(TINY, name="heldout", steps=30, seeds=(9,)))
    report = recipe.main(["--budget-minutes", "0.1", "--population", "8", "--tournament", "3", "--top", "2",
                          "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    for needle in ("Tuned AdamW", "redundancy", "cache-hit rate", "Lion-form program", "warm start", "held-out task"):
        assert needle in printed
    assert 1 <= len(report["programs"]) <= 2
    assert 0 <= report["search"]["redundancy"] <= 1 and report["search"]["children"] > 0
    assert set(report["references"]) == {"warm start", "lion"}
    assert report["found"] == sum(p["accepted"] and p["heldout"]["beats_adamw"] for p in report["programs"])
    for entry in report["programs"]:
        assert set(entry) >= {"proxy", "funnel", "heldout", "text", "short", "lion_form", "accepted"}
        assert entry["lion_form"] == is_lion_form(parse(entry["text"]))
        for stage in ("proxy", "funnel", "heldout"):
            assert entry[stage]["beats_adamw"] == (entry[stage]["score"] < 1.0)
            (task, result), = entry[stage]["tasks"].items()
            assert entry[stage]["score"] == pytest.approx(result["loss"] / report["adamw"][stage][task]["loss"])
    saved = tmp_path / "program_1.txt"
    assert (tmp_path / "results.json").exists() and saved.exists()
    DiscoveredOptimizer(_params(), program=str(saved), lr=1e-3)
    with pytest.raises(SystemExit):
        recipe.arguments(["--budget-minutes", "0"])
