"""The old home of the training pipeline, kept so that existing imports keep working.

The pipeline now lives in :mod:`smg_learning.continual` (the loop),
:mod:`smg_learning.strategies` (one module per strategy), :mod:`smg_learning.replay`
(replay memories and the SMD's stages) and :mod:`smg_learning.run_io` (run folder files).
"""

from smg_learning.continual import train_continual
from smg_learning.replay import real_memory, resize_pairs, smd_memory, train_smd_stage
from smg_learning.run_io import load_run, read_run_info, write_run_header

__all__ = [
    "load_run",
    "read_run_info",
    "real_memory",
    "resize_pairs",
    "smd_memory",
    "train_continual",
    "train_smd_stage",
    "write_run_header",
]
