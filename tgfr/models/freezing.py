"""Frozen mode shared by the pretrained parts (face backbone, text encoder)."""

import contextlib

import torch
from torch import nn


class FreezableModule(nn.Module):
    """A module that can be frozen: eval mode for good, no parameter trains, forward builds no graph.

    Subclasses call `self._init_frozen(frozen)` in `__init__` after creating their parameters and
    run their forward under `self.grad_context()`.
    """

    frozen: bool

    def _init_frozen(self, frozen: bool) -> None:
        self.frozen = False
        if frozen:
            self.freeze()

    def freeze(self) -> "FreezableModule":
        """Switches to eval mode, sets requires_grad False on every parameter; returns self."""
        self.frozen = True
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "FreezableModule":
        # A frozen module keeps BatchNorm running statistics and dropout off even when a parent
        # model switches to training.
        return super().train(mode and not self.frozen)

    def grad_context(self) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self.frozen else contextlib.nullcontext()
