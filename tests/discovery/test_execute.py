"""Compiled programs (lion_integrations.discovery.execute): constants fold, scalars broadcast."""

from __future__ import annotations

import pytest
import torch

from lion_integrations.discovery import compile_program
from lion_integrations.discovery.execute import as_tensor_like

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compiled_program_folds_constants_and_broadcasts():
    step = compile_program("c = sqrt(4.0); c = c * 0.5; update = sign(g) * c * lr; v = norm(g)")
    g = torch.tensor([[-3.0, 4.0]])
    update, m, v = step(torch.zeros(1, 2), g, torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(0.1))
    assert torch.allclose(update, torch.tensor([[-0.1, 0.1]]))
    assert v.item() == pytest.approx(5.0)
    assert torch.equal(as_tensor_like(v, g), torch.full((1, 2), 5.0))
