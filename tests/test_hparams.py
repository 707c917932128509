"""AdamW-to-Lion translation and the decay/no-decay parameter grouping."""

import pytest
from torch import nn

from lion_integrations import Lion
from lion_integrations.hparams import from_adamw, param_groups


def test_from_adamw_keeps_lr_times_weight_decay():
    translated = from_adamw(3e-4, 0.1, ratio=10)
    assert translated == pytest.approx({"lr": 3e-5, "weight_decay": 1.0})
    assert translated["lr"] * translated["weight_decay"] == pytest.approx(3e-4 * 0.1)
    assert from_adamw(3e-4, 0.1) == pytest.approx({"lr": 1e-4, "weight_decay": 0.3})


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(ratio=0), "Invalid ratio: 0"), (dict(lr=-1.0), "Invalid lr: -1.0"), (dict(weight_decay=-2.0), "Invalid weight_decay: -2.0")],
)
def test_from_adamw_rejects_bad_input(kwargs, message):
    arguments = {"lr": 1e-3, "weight_decay": 0.01, **kwargs}
    with pytest.raises(ValueError, match=message):
        from_adamw(**arguments)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.batch_norm = nn.BatchNorm1d(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_exempt_biases_and_norms_once_each():
    model = Block()
    decay, no_decay = param_groups(model, weight_decay=0.3, lr=1e-3)
    ids = lambda group: {id(p) for p in group["params"]}
    assert ids(decay) == {id(model.embed.weight), id(model.proj.weight)}
    assert ids(no_decay) == {id(model.norm.weight), id(model.norm.bias), id(model.proj.bias),
                             id(model.batch_norm.weight), id(model.batch_norm.bias)}
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["lr"]) == (0.3, 0.0, 1e-3)
    optimizer = Lion(param_groups(model, weight_decay=0.3))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]
