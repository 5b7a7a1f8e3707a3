"""Labelled ECG collections (PTB-XL, ECG-QA) and the builders that turn them into conversations."""

from ecgllm.datasets.ecgqa import ECGQA, QASample
from ecgllm.datasets.ptbxl import PTBXL, SPLIT_FOLDS

__all__ = ["PTBXL", "SPLIT_FOLDS", "ECGQA", "QASample"]
