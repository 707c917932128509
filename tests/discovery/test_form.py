"""Lion's form (lion_integrations.discovery.form): detected through copies, reorderings and equal
arithmetic, and not where it is buried in something else."""

from __future__ import annotations

import pytest

from lion_integrations.discovery import BUILTIN, is_lion_form, parse
from tests.helpers.discovery import ADAMW, LION

pytestmark = pytest.mark.usefixtures("one_thread")


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
