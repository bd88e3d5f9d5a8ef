"""``smg``: SMG-Learning, PGA with Site-Modulated Diffusion replay (Xu et al., arXiv 2406.18037)."""

from __future__ import annotations

from smg_learning.strategies.base import STRATEGIES
from smg_learning.strategies.pga_real import PGAStep
from smg_learning.strategies.smd_replay import SMDReplay


@STRATEGIES.register("smg")
class SMG(PGAStep, SMDReplay):
    name = "smg"
    description = "SMG-Learning: PGA with SMD replay"
