"""SMG-Learning: continual segmentation across sites (Xu, Wang, Zhang, Heng; arXiv 2406.18037).

Table of contents:

- :mod:`smg_learning.config`: ``RunConfig`` (+ ``PGAConfig``, ``SMDConfig``) and ``run_preset``
  (presets are ``configs/<preset>.yaml``).
- :mod:`smg_learning.synth`: synthetic multi-site prostate / fundus data in the public layouts.
- :mod:`smg_learning.data`: multi-site loaders, slices, per-site patient-level splits.
- :mod:`smg_learning.segmenter`: the MONAI 2D U-Net and the Dice + CE loss.
- :mod:`smg_learning.pga`: Parallel Gradient Alignment (first-order dual meta-objectives, exact variant).
- :mod:`smg_learning.smd`: Site-Modulated Diffusion (image + mask, per-site prompts, DDPM/DDIM).
- :mod:`smg_learning.replay`: replay memories (stored real slices, SMD samples) and the SMD's stages.
- :mod:`smg_learning.strategies`: the continual strategies (finetune ... smg), one module each.
- :mod:`smg_learning.continual`: the stage-per-site training loop.
- :mod:`smg_learning.run_io`: a run folder read back (config, split, facts).
- :mod:`smg_learning.train`: a new or resumed run (``smg-learning train``) from one ``RunSpec``.
- :mod:`smg_learning.sample`: image/mask pairs of one site from a run's SMD.
- :mod:`smg_learning.predict`: a mask file per input volume or image.
- :mod:`smg_learning.distributed`: gradient averaging over torchrun processes (PGA under DDP).
- :mod:`smg_learning.evaluate`: the stage x site Dice matrix, memorizability, generalizability, BWT, HD95.
- :mod:`smg_learning.benchmark`: all strategies over seeds, with the claims checked.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
