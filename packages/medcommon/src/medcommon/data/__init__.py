"""Manifests, patient-level splits and caching of decoded arrays."""

from medcommon.data.cache import ArrayCache
from medcommon.data.manifest import read_csv_rows, read_jsonl
from medcommon.data.splits import check_disjoint, patient_kfold, patient_split

__all__ = [
    "ArrayCache",
    "check_disjoint",
    "patient_kfold",
    "patient_split",
    "read_csv_rows",
    "read_jsonl",
]
