"""medai-testkit: the shared test suites and the mutation runner of the medical-AI packages.

A development distribution, installed by the test sessions (``nox -s tests``) and by
developers; no runtime package imports it, so ``import medcommon`` and every console
script work without pytest.

- :mod:`medai_testkit.conformance`: :class:`ModelConformance`, :class:`MethodStepContract`,
  :class:`CLIContract`, adopted by subclassing in a package's tests;
- :mod:`medai_testkit.distributed`: :func:`run_torchrun`, :func:`assert_same_safetensors`;
- :mod:`medai_testkit.gpu`: the ``gpu`` tests' mixed-precision steps;
- :mod:`medai_testkit.files`: real DICOM files shipped by test-only wheels;
- :mod:`medai_testkit.mutation`: mutation testing, ``python -m medai_testkit.mutation PKG``.
"""

from medai_testkit.conformance import CLIContract, MethodProbe, MethodStepContract, ModelConformance
from medai_testkit.distributed import assert_same_safetensors, free_port, run_torchrun
from medai_testkit.files import pydicom_data_file, pydicom_test_file
from medai_testkit.gpu import (
    GPU_DEVICE,
    GPU_MARKS,
    GPU_ON_CPU,
    GPU_PRECISIONS,
    GPU_STEPS,
    gpu_fit_steps,
)

__all__ = [
    "GPU_DEVICE",
    "GPU_MARKS",
    "GPU_ON_CPU",
    "GPU_PRECISIONS",
    "GPU_STEPS",
    "CLIContract",
    "MethodProbe",
    "MethodStepContract",
    "ModelConformance",
    "assert_same_safetensors",
    "free_port",
    "gpu_fit_steps",
    "pydicom_data_file",
    "pydicom_test_file",
    "run_torchrun",
]
