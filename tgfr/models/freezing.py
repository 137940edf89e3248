"""Frozen mode shared by the pretrained parts (face backbone, text encoder)."""

import contextlib
from collections.abc import Iterable

import torch
from torch import nn


class KeepsFrozenPartsFixed(nn.Module):
    """An nn.Module whose `requires_grad_` leaves off every parameter under it that must not train.

    nn.Module.requires_grad_ sets every parameter of the tree directly, without calling the
    submodules' own requires_grad_, so a model holding FreezableModules (and each FreezableModule)
    derives from this class to keep their frozen and fixed parameters off, as `train()` keeps a
    frozen module in eval mode. A call that starts at a module above (nn.Sequential, DistributedDataParallel,
    torch.compile's wrapper) passes over it: FreezableModule.grad_context turns them off again at the next forward.
    """

    def requires_grad_(self, requires_grad: bool = True) -> "KeepsFrozenPartsFixed":
        super().requires_grad_(requires_grad)
        for module in self.modules():
            if isinstance(module, FreezableModule):
                module._turn_untrainable_off()
        return self


class FreezableModule(KeepsFrozenPartsFixed):
    """A module that can be frozen: eval mode for good, no parameter trains, forward builds no graph.

    Subclasses call `self._init_frozen(frozen)` in `__init__` after creating their parameters and
    run their forward under `self.grad_context()`; they list in `fixed_parameters` the parameters
    that never train, frozen or not.
    """

    frozen: bool = False

    def _init_frozen(self, frozen: bool) -> None:
        """Every parameter trains but the fixed ones, in training mode throughout, as a new nn.Module is
        (transformers hands its models back in eval mode, dropout off); or none, in eval mode, when `frozen`."""
        self.frozen = False
        self.requires_grad_(True)
        self.train()
        if frozen:
            self.freeze()

    def requires_grad_(self, requires_grad: bool = True) -> "FreezableModule":
        """nn.Module's, with the fixed parameters kept off; a frozen module refuses True: its forward
        builds no graph, so its parameters would never get a gradient (build it unfrozen to train it,
        TGFRConfig.freeze_backbone / freeze_text_encoder). A parent model's requires_grad_(True)
        passes over it instead (KeepsFrozenPartsFixed)."""
        if requires_grad and self.frozen:
            raise ValueError(f"this {type(self).__name__} is frozen for good (its forward builds no graph), so "
                             "requires_grad_(True) would train nothing; build it with frozen=False to train it")
        return super().requires_grad_(requires_grad)

    def fixed_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters that keep requires_grad False even when the module trains (none by default)."""
        return ()

    def _turn_untrainable_off(self) -> None:
        """requires_grad False on every parameter of a frozen module, on the fixed ones of one that trains."""
        for parameter in self.parameters() if self.frozen else self.fixed_parameters():
            parameter.requires_grad_(False)

    def freeze(self) -> "FreezableModule":
        """Switches to eval mode, sets requires_grad False on every parameter; returns self."""
        self.frozen = True
        self._turn_untrainable_off()
        return self.train(False)

    def train(self, mode: bool = True) -> "FreezableModule":
        # A frozen module keeps BatchNorm running statistics and dropout off even when a parent
        # model switches to training.
        return super().train(mode and not self.frozen)

    def grad_context(self) -> contextlib.AbstractContextManager:
        """The context the forward runs in: no_grad when frozen. It first turns the parameters that must not
        train off again, which a wrapper's requires_grad_(True) turned on (nn.Module's sets every parameter
        directly): a frozen one would never get a gradient (DistributedDataParallel refuses that), a fixed one
        would train."""
        self._turn_untrainable_off()
        return torch.no_grad() if self.frozen else contextlib.nullcontext()
