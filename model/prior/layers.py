"""The gated PixelCNN's causal building blocks: shifts, the two stacks' convolutions and one gated layer.

Causality comes from padding and shifting, not from masked kernels: each convolution's kernel only covers cells
that are allowed, so no weight is ever zeroed and the parameter count is the real one. Two stacks, as in van den
Oord et al. 2016 ("Conditional Image Generation with PixelCNN Decoders"):

- the vertical stack at (i, j) sees every row strictly above i, over a window of columns that widens by k // 2
  each side per layer: it includes the cells up and to the right, which a masked 3x3 PixelCNN never sees (the
  "blind spot");
- the horizontal stack at (i, j) sees the cells left of j in row i, plus the vertical stack at (i, j).

So a cell's output depends only on the cells before it in raster order: the network input is shifted once (down
for the vertical stack, right for the horizontal one) and every layer after that may include its own position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) with row i holding row i - 1, row 0 zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) with column j holding column j - 1, column 0 zeros."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def gate(x: torch.Tensor) -> torch.Tensor:
    """The gated activation tanh(a) * sigmoid(b) over the two halves of the channels: (B, 2C, ...) -> (B, C, ...)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class VerticalConv(nn.Conv2d):
    """A (k // 2 + 1) x k convolution whose output at row i reads rows i - k // 2 .. i: nothing below."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=(kernel_size // 2 + 1, kernel_size))
        self.reach = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pad left, right, top; the output keeps (H, W)
        return super().forward(F.pad(x, (self.reach, self.reach, self.reach, 0)))


class HorizontalConv(nn.Conv2d):
    """A 1 x (k // 2 + 1) convolution whose output at column j reads columns j - k // 2 .. j of the same row."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=(1, kernel_size // 2 + 1))
        self.reach = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.reach, 0, 0, 0)))


class GatedLayer(nn.Module):
    """One gated layer of both stacks, optionally biased by a label (the paper's class-conditional h term).

    The vertical pre-activation feeds the horizontal one through a 1x1 convolution (the vertical stack only ever
    holds rows above, so this leaks nothing); the horizontal stack is residual.
    """

    def __init__(self, channels: int, kernel_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.vertical = VerticalConv(channels, 2 * channels, kernel_size)
        self.horizontal = HorizontalConv(channels, 2 * channels, kernel_size)
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        self.horizontal_out = nn.Conv2d(channels, channels, kernel_size=1)
        # one row per label plus the "no label" row: a bias for the vertical and for the horizontal pre-activation
        self.label_bias = nn.Embedding(num_labels + 1, 4 * channels) if num_labels else None
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, vertical: torch.Tensor, horizontal: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) stacks and (B,) label indices -> the next (B, C, H, W) stacks."""
        v_pre = self.vertical(vertical)  # (B, 2C, H, W)
        h_pre = self.horizontal(horizontal) + self.vertical_to_horizontal(v_pre)  # (B, 2C, H, W)
        if self.label_bias is not None and labels is not None:
            v_bias, h_bias = self.label_bias(labels)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, 2C, 1, 1)
            v_pre, h_pre = v_pre + v_bias, h_pre + h_bias
        horizontal = horizontal + self.dropout(self.horizontal_out(gate(h_pre)))
        return gate(v_pre), horizontal
