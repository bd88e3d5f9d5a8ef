"""medcommon: the shared core of the medical-AI method packages.

- :mod:`medcommon.io`: read and write DICOM, NIfTI/MHA/NRRD, PNG/JPEG.
- :mod:`medcommon.data`: manifests, patient-level splits, array caching.
- :mod:`medcommon.metrics`: segmentation, classification, continual, text, privacy.
- :mod:`medcommon.train`: the Accelerate training loop with checkpoint/resume.
- :mod:`medcommon.models`: ``save_pretrained`` / ``from_pretrained`` (safetensors).
- :mod:`medcommon.config`: dataclass configs with YAML and ``--set`` overrides.
- :mod:`medcommon.report`: benchmark results, markdown tables and plots.
- :mod:`medcommon.cli`: the shared command-line contract and error handling.
- :mod:`medcommon.synthetic`: procedural shapes, textures and site shifts.
- :mod:`medcommon.presets`: presets as data files (``configs/<preset>.yaml``).
- :mod:`medcommon.run`: the run folder (``RunSpec``, ``open_run``, one ``config.json`` schema).
- :mod:`medcommon.provenance`: git commit, dirty tree, threads and versions of a result.

The shared test suites and the mutation runner are a separate development
distribution (``tools/testkit``, ``medai_testkit``): nothing here needs pytest.
"""

from medcommon.errors import InputError

__version__ = "0.1.0"

__all__ = ["InputError", "__version__"]
