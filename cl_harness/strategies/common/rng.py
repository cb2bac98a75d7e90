"""Keeping a strategy's bookkeeping out of the random stream that training draws from."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch


def rng_untouched(device: torch.device | str) -> AbstractContextManager:
    """Restore torch's random state (CPU, and ``device`` when it is CUDA) when the block ends.

    An importance pass builds a DataLoader, whose iterator draws a seed from the global generator even
    without workers. Drawn inside training, that shifts every later dropout mask and shuffle, so EWC or
    MAS with a zero weight would train differently from naive on the same seed: the comparison would
    measure the draw, not the penalty, and paired tests would pair different trajectories.
    """
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
