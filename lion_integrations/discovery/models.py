"""The proxy tasks' models, as functions of `B` models' parameters at once: an MLP and a small transformer.

Each model lists its parameter tensors (`shapes`, each with the standard deviation `stds` it is
initialised with, 0 for biases); the batched trainer keeps ``B`` models' parameters as rows of one
``[B, P]`` tensor and passes each tensor as a ``[B, *shape]`` view. `forward(layers, x)` maps inputs
``x`` ``[B, n, dim]`` (or ``[n, dim]``, shared by every model) to logits ``[B, n, classes]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MODELS = ("mlp", "transformer")
HEAD_WIDTH = 16  # features per attention head
MLP_RATIO = 4  # a transformer block's MLP width / its model width


class MLP:
    """ReLU MLP ``dim -> hidden... -> classes`` (He-initialised weights, zero biases); with
    `layer_norm`, each hidden layer's pre-activations are normalized over its units (no affine
    parameters) before the ReLU."""

    def __init__(self, dim: int, hidden: tuple[int, ...], classes: int, layer_norm: bool = False) -> None:
        widths = [dim, *hidden, classes]
        self.layer_norm = layer_norm
        self.shapes: list[tuple[int, ...]] = []
        self.stds: list[float] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            self.shapes += [(fan_in, fan_out), (fan_out,)]
            self.stds += [math.sqrt(2.0 / fan_in), 0.0]
        self.description = f"MLP {'-'.join(map(str, widths))}"

    def forward(self, layers: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x
        for index in range(0, len(layers), 2):
            weight, bias = layers[index], layers[index + 1]
            h = torch.matmul(h, weight) + bias.unsqueeze(1)
            if index + 2 < len(layers):
                if self.layer_norm:
                    h = F.layer_norm(h, h.shape[-1:])
                h = torch.relu(h)
        return h


class Transformer:
    """A pre-norm transformer encoder over the input's `tokens` tokens (``dim / tokens`` features each:
    a one-hot character of the text's context, or a row of a digit's pixels), read out at the last token.

    ``h_0 = x_t E + P_t``; per block, ``h = h + Attn(LN(h))`` (``width / HEAD_WIDTH`` heads, full
    attention over the tokens, queries, keys and values from one ``[width, 3 width]`` matrix, output
    projection ``[width, width]``) and ``h = h + relu(LN(h) W_1 + b_1) W_2 + b_2`` (``MLP_RATIO x
    width`` hidden units); logits ``LN(h_last) W_out + b_out``. Layer norms have no affine parameters.
    Weights start at N(0, 1 / fan_in) (2 / fan_in before the ReLU), positions at N(0, 1 / width).
    """

    def __init__(self, dim: int, tokens: int, width: int, blocks: int, classes: int) -> None:
        if dim % tokens:
            raise ValueError(f"Invalid tokens: {tokens!r} (the input's {dim} features must split evenly into tokens)")
        if width % HEAD_WIDTH:
            raise ValueError(f"Invalid width: {width!r} (a transformer's width must be a multiple of {HEAD_WIDTH})")
        self.tokens, self.blocks = tokens, blocks
        self.token_dim, self.heads = dim // tokens, width // HEAD_WIDTH
        inner = MLP_RATIO * width
        self.shapes = [(self.token_dim, width), (tokens, width)]
        self.stds = [1 / math.sqrt(self.token_dim), 1 / math.sqrt(width)]
        for _ in range(blocks):
            self.shapes += [(width, 3 * width), (width, width), (width, inner), (inner,), (inner, width), (width,)]
            self.stds += [1 / math.sqrt(width), 1 / math.sqrt(width), math.sqrt(2.0 / width), 0.0,
                          1 / math.sqrt(inner), 0.0]
        self.shapes += [(width, classes), (classes,)]
        self.stds += [1 / math.sqrt(width), 0.0]
        self.description = f"transformer {blocks} x {width} ({self.heads} heads) over {tokens} tokens"

    def forward(self, layers: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        models = layers[0].shape[0]
        x = x.expand(models, *x.shape[-2:])
        n = x.shape[1]
        embed, positions, rest = layers[0], layers[1], layers[2:]
        h = batched_linear(x.reshape(models, n, self.tokens, self.token_dim), embed) + positions.unsqueeze(1)
        for block in range(self.blocks):
            qkv_w, out_w, w1, b1, w2, b2 = rest[6 * block:6 * block + 6]
            q, k, v = batched_linear(F.layer_norm(h, h.shape[-1:]), qkv_w).chunk(3, -1)
            q, k, v = (t.reshape(models * n, self.tokens, self.heads, HEAD_WIDTH).transpose(1, 2) for t in (q, k, v))
            attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(h.shape)
            h = h + batched_linear(attended, out_w)
            hidden = torch.relu(batched_linear(F.layer_norm(h, h.shape[-1:]), w1) + b1[:, None, None])
            h = h + batched_linear(hidden, w2) + b2[:, None, None]
        head_w, head_b = rest[-2], rest[-1]
        return F.layer_norm(h[:, :, -1], h.shape[-1:]) @ head_w + head_b.unsqueeze(1)


def batched_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight`` per model: x ``[B, ..., fan_in]``, weight ``[B, fan_in, fan_out]``, as one batched
    matmul over ``[B, rows, fan_in]`` (broadcasting the weight over the middle dimensions copies it)."""
    return torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[-1])
