"""One training loop on Hugging Face Accelerate with a pluggable step function.

A method supplies ``step_fn(model, batch, ctx) -> loss`` (or a dict with a
``"loss"`` entry plus values to log); the loop owns devices, mixed precision,
gradient accumulation, clipping, DDP, logging, evaluation (keeping the
best weights is a method's ``state`` object), checkpoint/resume and progress bars.
"""

from medcommon.train.config import TrainConfig
from medcommon.train.loop import FitResult, StepContext, Trainer
from medcommon.train.sampling import EpochBatchSampler
from medcommon.train.seeding import fix_threads, seed_everything
from medcommon.train.workers import pinned_map, pinned_pool

__all__ = [
    "EpochBatchSampler",
    "FitResult",
    "StepContext",
    "TrainConfig",
    "Trainer",
    "fix_threads",
    "pinned_map",
    "pinned_pool",
    "seed_everything",
]
