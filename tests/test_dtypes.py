"""float64 parameters computed in float64, complex parameters stepped as real pairs (as torch's
optimizers do), on every path."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lion_integrations import Lion, Lion8bit
from tests.helpers.robustness import PATHS

pytestmark = pytest.mark.usefixtures("fuse_small_tensors")


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("cls", [Lion, Lion8bit])
def test_float64_parameters_are_computed_in_float64(cls, path):
    torch.manual_seed(0)
    start = torch.randn(32, 64, dtype=torch.float64)
    param = nn.Parameter(start.clone())
    extra = dict(min_quantized_size=0) if cls is Lion8bit else {}
    param.grad = torch.randn_like(param)
    cls([param], lr=0.0, **PATHS[path], **extra).step()
    assert torch.equal(param.detach(), start)  # lr 0 changes nothing (float32 arithmetic rounded it)

    if cls is Lion:  # against a float64 reference of the rule
        optimizer = Lion([param], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, **PATHS[path])
        reference, exp_avg = start.clone(), torch.zeros_like(start)
        generator = torch.Generator().manual_seed(1)
        for _ in range(50):
            grad = torch.randn(start.shape, generator=generator, dtype=torch.float64)
            param.grad = grad
            optimizer.step()
            update = (0.9 * exp_avg + 0.1 * grad).sign()
            reference = reference * (1 - 1e-3 * 0.1) - 1e-3 * update
            exp_avg = 0.99 * exp_avg + 0.01 * grad
        assert optimizer.state[param]["exp_avg"].dtype == torch.float64
        torch.testing.assert_close(param.detach(), reference, rtol=0, atol=1e-13)


@pytest.mark.parametrize("path", list(PATHS))
def test_complex_parameters_step_as_real_pairs_like_torch_optimizers(path):
    # torch's optimizers step view_as_real(param) with view_as_real(grad): so does Lion.
    param = nn.Parameter(torch.tensor([1 + 2j, -3 + 4j]))
    real_twin = nn.Parameter(torch.view_as_real(param.detach()).clone())
    optimizer = Lion([param], lr=0.1, **PATHS[path])
    twin_optimizer = Lion([real_twin], lr=0.1, **PATHS[path])
    for step, grad in enumerate((torch.tensor([0.5 - 1j, -2 + 0.25j]), torch.tensor([-1 + 1j, 1 - 3j]))):
        param.grad, real_twin.grad = grad, torch.view_as_real(grad).clone()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimizer.step()
        twin_optimizer.step()
        if step == 0:  # each part moves by lr against its gradient's sign
            torch.testing.assert_close(param.detach(), torch.tensor([0.9 + 2.1j, -2.9 + 3.9j]))
        torch.testing.assert_close(torch.view_as_real(param.detach()), real_twin.detach())
    assert optimizer.state[param]["exp_avg"].dtype == torch.complex64
    # Adam takes the same view: the imaginary parts move too.
    adam_param = nn.Parameter(torch.tensor([1 + 2j, -3 + 4j]))
    adam_param.grad = torch.tensor([0.5 - 1j, -2 + 0.25j])
    torch.optim.Adam([adam_param], lr=0.1).step()
    assert (adam_param.detach().imag != torch.tensor([2.0, 4.0])).all()


def test_complex_parameters_keep_full_precision_momentum_in_lion8bit():
    param = nn.Parameter(torch.randn(64, 64, dtype=torch.complex64))
    optimizer = Lion8bit([param], lr=0.1, min_quantized_size=0)
    param.grad = torch.randn_like(param)
    optimizer.step()
    assert optimizer.state[param]["exp_avg"].dtype == torch.complex64
    with pytest.raises(ValueError, match=r"Invalid momentum_dtype: torch.bfloat16 for a complex parameter"):
        complex_param = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
        complex_param.grad = torch.ones_like(complex_param)
        Lion([complex_param], momentum_dtype=torch.bfloat16).step()
