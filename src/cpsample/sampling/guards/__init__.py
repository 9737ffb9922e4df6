"""Guidance strategies, selectable by name with --guard. A new strategy is one file plus one line here."""

from cpsample.sampling.guards.base import Guard, NoGuard
from cpsample.sampling.guards.cpsample import CPSampleGuard
from cpsample.sampling.guards.amg import AMGGuard
from cpsample.sampling.guards.chain import ChainGuard
from cpsample.sampling.guards.classifier_guidance import ClassifierGuidanceGuard
from cpsample.sampling.guards.delayed_cfg import DelayedCFGGuard, OppositeGuidanceGuard

GUARDS = {"none": NoGuard, "cpsample": CPSampleGuard}
GUARDS["amg"] = AMGGuard
GUARDS["delayed-cfg"] = DelayedCFGGuard
GUARDS["opposite-cfg"] = OppositeGuidanceGuard

__all__ = ["GUARDS", "AMGGuard", "CPSampleGuard", "ChainGuard", "ClassifierGuidanceGuard", "DelayedCFGGuard", "Guard",
           "NoGuard", "OppositeGuidanceGuard"]
