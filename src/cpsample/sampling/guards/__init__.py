"""Guidance strategies, selectable by name with --guard. A new strategy is one file plus one line here."""

from cpsample.sampling.guards.base import Guard, NoGuard
from cpsample.sampling.guards.cpsample import CPSampleGuard

GUARDS = {"none": NoGuard, "cpsample": CPSampleGuard}

__all__ = ["GUARDS", "CPSampleGuard", "Guard", "NoGuard"]
