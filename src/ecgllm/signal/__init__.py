"""Signal preparation and measurements (NumPy/SciPy/neurokit2 only; no torch in this layer)."""

from ecgllm.signal.filters import bandpass, notch, remove_baseline
from ecgllm.signal.leads import derive_limb_leads, reorder_leads
from ecgllm.signal.measure import AXIS_CATEGORIES, Measurements, axis_category, measure
from ecgllm.signal.normalize import NORM_MODES, normalize
from ecgllm.signal.prepare import PrepConfig, PreparedECG, prepare, prepare_array, prepare_batch
from ecgllm.signal.resample import resample
from ecgllm.signal.window import crop_or_pad, segment

__all__ = [
    "bandpass", "notch", "remove_baseline", "derive_limb_leads", "reorder_leads", "AXIS_CATEGORIES",
    "Measurements", "axis_category", "measure", "NORM_MODES", "normalize", "PrepConfig", "PreparedECG",
    "prepare", "prepare_array", "prepare_batch", "resample", "crop_or_pad", "segment",
]
