"""Batch transforms for image tensors (torch only)."""

from __future__ import annotations

import torch
from torch import nn

from spred._validation import check_int


class RandomCropFlip(nn.Module):
    """Standard CIFAR augmentation on the batch (training mode only): padded random crop, horizontal flip.

    Each image of a ``(n, channels, height, width)`` batch is zero-padded by ``padding``
    pixels on every side, cropped back to its size at a random offset and flipped
    left-right with probability 1/2, using torch's global random generator.
    An identity in eval mode; parameter-free, so it changes no parameter count.

    Parameters
    ----------
    padding : int, default=4

    Examples
    --------
    >>> aug = RandomCropFlip()
    >>> x = torch.rand(2, 3, 32, 32)
    >>> aug(x).shape, aug.eval()(x) is x
    (torch.Size([2, 3, 32, 32]), True)
    """

    def __init__(self, padding: int = 4):
        super().__init__()
        self.padding = check_int(padding, "padding", "RandomCropFlip", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n, _, h, w = x.shape
        p = self.padding
        padded = nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), device=x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
        flip = torch.rand(n, device=x.device) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(3), out)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"
