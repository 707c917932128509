"""`lion_integrations.checks` through the optimizers: values of the wrong type refused at once with
the error torch raises; booleans are not numbers."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from lion_integrations import Lion, Lion8bit

pytestmark = pytest.mark.usefixtures("fuse_small_tensors")


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr="1e-3"), dict(weight_decay="0.1"), dict(betas=["0.9", "0.99"]), dict(betas=0.9)],
)
@pytest.mark.parametrize("cls", [Lion, Lion8bit])
def test_wrong_types_raise_the_error_torch_raises(cls, kwargs):
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(Exception) as torch_error:
        torch.optim.AdamW(params, **kwargs)
    with pytest.raises(torch_error.type, match="Invalid (lr|weight_decay|betas)"):
        cls(params, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr=True), dict(weight_decay=False), dict(betas=(True, 0.99))])
def test_booleans_are_not_numbers(kwargs):
    with pytest.raises(TypeError, match="Invalid (lr|weight_decay|betas)"):
        Lion([nn.Parameter(torch.zeros(2))], **kwargs)
