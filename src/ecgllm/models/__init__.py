"""ECG encoders, projectors, the ECG language model and its processor."""

from ecgllm.models.configuration import EcgLanguageModelConfig, EcgLMConfig
from ecgllm.models.ecg_lm import EcgLanguageModel, EcgTokenCountError
from ecgllm.models.encoders import ENCODERS, build_encoder
from ecgllm.models.processor import EcgProcessor, ProcessorConfig
from ecgllm.models.projector import PROJECTORS, build_projector

__all__ = ["EcgLanguageModel", "EcgLanguageModelConfig", "EcgLMConfig", "EcgTokenCountError", "ENCODERS", "build_encoder", "EcgProcessor",
           "ProcessorConfig", "PROJECTORS", "build_projector"]
