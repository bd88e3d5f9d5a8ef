"""SMG-Learning: continual segmentation across sites (Xu, Wang, Zhang, Heng; arXiv 2406.18037).

Table of contents:

- :mod:`smg_learning.config`: ``SMGConfig`` (+ ``PGAConfig``, ``SMDConfig``) and presets.
- :mod:`smg_learning.synth`: synthetic multi-site prostate / fundus data in the public layouts.
- :mod:`smg_learning.data`: multi-site loaders, slices, per-site patient-level splits.
- :mod:`smg_learning.segmenter`: the MONAI 2D U-Net and the Dice + CE loss.
- :mod:`smg_learning.pga`: Parallel Gradient Alignment (first-order dual meta-objectives, exact variant).
- :mod:`smg_learning.smd`: Site-Modulated Diffusion (image + mask, per-site prompts, DDPM/DDIM).
- :mod:`smg_learning.strategies`: the continual strategies (finetune ... smg) as step functions.
- :mod:`smg_learning.train`: the stage-per-site training pipeline.
- :mod:`smg_learning.evaluate`: the stage x site Dice matrix, memorizability, generalizability, BWT, HD95.
- :mod:`smg_learning.benchmark`: all strategies over seeds, plus the cost ratios.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
