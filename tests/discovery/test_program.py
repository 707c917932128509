"""Program text (lion_integrations.discovery.program): round trips, nested expressions, and errors."""

from __future__ import annotations

import pytest

from lion_integrations.discovery import BUILTIN, Program, Statement, parse, program_hash
from tests.helpers.discovery import LION, same_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")


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
