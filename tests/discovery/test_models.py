"""The proxy tasks' models (lion_integrations.discovery.models): the batched transformer against a
one-model reference written out op by op, its parameter layout, and its bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lion_integrations.discovery.models import HEAD_WIDTH, Transformer
from lion_integrations.discovery.tasks import TINY
from lion_integrations.discovery.training import Task

pytestmark = pytest.mark.usefixtures("one_thread")


def one_transformer(params: list[torch.Tensor], x: torch.Tensor, tokens: int, blocks: int) -> torch.Tensor:
    """A single model's logits, one attention head at a time, with an explicit softmax."""
    embed, positions = params[:2]
    width = embed.shape[1]
    h = x.view(len(x), tokens, -1) @ embed + positions
    for block in range(blocks):
        qkv, out, w1, b1, w2, b2 = params[2 + 6 * block:8 + 6 * block]
        q, k, v = (F.layer_norm(h, (width,)) @ qkv).split(width, -1)
        heads = []
        for start in range(0, width, HEAD_WIDTH):
            part = slice(start, start + HEAD_WIDTH)
            weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / HEAD_WIDTH**0.5, -1)
            heads.append(weights @ v[..., part])
        h = h + torch.cat(heads, -1) @ out
        h = h + torch.relu(F.layer_norm(h, (width,)) @ w1 + b1) @ w2 + b2
    return F.layer_norm(h[:, -1], (width,)) @ params[-2] + params[-1]


@pytest.mark.parametrize("data, context", [("text2", 4), ("digits", 8)])
def test_batched_transformer_matches_one_model_written_out(data, context):
    task = Task(replace(TINY, data=data, context=context, model="transformer", hidden=(32, 32)))
    theta = torch.stack([task._init(seed) for seed in (0, 1, 2)])
    theta = theta + 0.1 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(0))  # biases too
    x = task.data.val[:7]
    batched = task._forward(theta, x)
    assert batched.shape == (3, 7, task.data.classes)
    for row in range(3):
        params = [layer[row] for layer in task._layers(theta)]
        assert torch.allclose(batched[row], one_transformer(params, x, task.data.tokens, 2), atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)  # the seeds initialise differently


def test_transformer_parameter_layout():
    task = Task(replace(TINY, data="text2", context=4, model="transformer", hidden=(32,)))
    vocab, width = task.data.classes, 32
    block = width * 3 * width + width * width + width * 4 * width + 4 * width + 4 * width * width + width
    assert task.size == vocab * width + 4 * width + block + width * vocab + vocab
    assert task.model.heads == 2 and task.data.tokens == 4
    assert "transformer 1 x 32 (2 heads) over 4 tokens" in repr(task)
    assert torch.equal(task._init(5), task._init(5)) and not torch.equal(task._init(5), task._init(6))


def test_transformer_bad_input_names_the_value():
    with pytest.raises(ValueError, match="Invalid width: 24"):
        Transformer(dim=64, tokens=8, width=24, blocks=1, classes=10)
    with pytest.raises(ValueError, match="Invalid tokens: 5"):
        Transformer(dim=64, tokens=5, width=32, blocks=1, classes=10)
    with pytest.raises(ValueError, match="model must be one of .* got 'rnn'"):
        replace(TINY, model="rnn")
    with pytest.raises(ValueError, match=r"hidden widths must be equal .* got \(32, 16\)"):
        replace(TINY, model="transformer", hidden=(32, 16))
    with pytest.raises(ValueError, match="layer_norm=True is for MLPs"):
        replace(TINY, model="transformer", hidden=(32,), layer_norm=True)
