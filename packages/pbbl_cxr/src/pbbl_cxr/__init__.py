"""Pseudo bias-balanced learning for debiased chest X-ray classification (Luo et al., MICCAI 2022).

Table of contents:

- :mod:`.config`     frozen dataclass configs; the presets are ``configs/<name>.yaml``
- :mod:`.synth`      synthetic GbP/SbP-style datasets (subtle lesion label, easy global bias cue)
- :mod:`.data`       split manifests (published CSV quirks, header detection, path remapping)
- :mod:`.splits`     building biased, patient-disjoint splits from NIH / MIMIC metadata
- :mod:`.models`     small CNN, MONAI DenseNet-121, optional frozen backbone + MLP head
- :mod:`.losses`     GCE, bias-balanced softmax, LfF weights, Group DRO weights
- :mod:`.pseudo`     Youden / argmax pseudo bias labels and the prior p(y | b_hat)
- :mod:`.methods`    the registry, one module per method: erm, gce, lff, groupdro, bbs-oracle, pbbl
- :mod:`.train`      one training stage on :class:`medcommon.train.Trainer`, best-model keeping
- :mod:`.distributed` torchrun runs like one process: LfF / Group DRO state sync
- :mod:`.evaluate`   AUC overall / aligned / conflicting / balanced, AP, group accuracies
- :mod:`.run`        a ``train`` run, start to finish (:func:`medcommon.run.open_run`)
- :mod:`.predict`    p(y=1) of new DICOM/PNG/JPEG files with a trained run
- :mod:`.benchmark`  all methods x GbP/SbP x bias ratios x seeds
- :mod:`.cli`        the ``pbbl-cxr`` console script
"""

__version__ = "0.1.0"
PACKAGE = "pbbl-cxr"  # the name run folders are stamped with (medcommon.run)
