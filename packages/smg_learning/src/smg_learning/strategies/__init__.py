"""The continual strategies, one per module, each a :class:`Strategy` in ``STRATEGIES``.

A strategy owns its hooks: what it does when a stage starts (replay memory), its
step (loss and update), and when a stage ends (EWC Fisher, LwF teacher, the SMD's
stage). Adding one is a module here with a registered subclass, imported below; it
is then available to the CLI, the benchmark and the parametrised smoke tests.
"""

from smg_learning.replay import ReplayMemory

# Registration order is the order of the --method choices and of the benchmark rows.
# isort: off
from smg_learning.strategies.base import STRATEGIES, RunContext, Strategy, step_generator
from smg_learning.strategies.finetune import Finetune
from smg_learning.strategies.joint import Joint
from smg_learning.strategies.ewc import EWC, EWCPenalty
from smg_learning.strategies.lwf import LwF
from smg_learning.strategies.replay_real import RealReplay, ReplayReal
from smg_learning.strategies.smd_replay import SMDReplay, SMDReplayPlain
from smg_learning.strategies.pga_real import PGAReal, PGAStep
from smg_learning.strategies.smg import SMG
from smg_learning.strategies.style_replay import StyleReplay
# isort: on

__all__ = [
    "EWC",
    "SMG",
    "STRATEGIES",
    "EWCPenalty",
    "Finetune",
    "Joint",
    "LwF",
    "PGAReal",
    "PGAStep",
    "RealReplay",
    "ReplayMemory",
    "ReplayReal",
    "RunContext",
    "SMDReplay",
    "SMDReplayPlain",
    "Strategy",
    "StyleReplay",
    "step_generator",
]
