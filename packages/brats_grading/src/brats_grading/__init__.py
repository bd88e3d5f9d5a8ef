"""brats-grading: cross-modality guided, dual-attention MC3 networks for HGG/LGG grading.

After Xu, Wang, Cai, Heng, "Cross-modality guidance-aided multi-modal learning with
dual attention for MRI brain tumor grading" (arXiv 2401.09029).

- :mod:`.config`: configs and presets; :mod:`.synth`: synthetic BraTS-like data;
  :mod:`.data`: BraTS 2018/2019/2020 loaders, preprocessing, patient-level folds.
- :mod:`.mc3`, :mod:`.attention`, :mod:`.model`: the network; :mod:`.losses`: guidance.
- :mod:`.methods`: the ``--method`` registry; :mod:`.train`, :mod:`.evaluate`,
  :mod:`.benchmark`, :mod:`.cli`.
"""

__version__ = "0.1.0"
PACKAGE = "brats-grading"  # the name run folders record (medcommon.run)
