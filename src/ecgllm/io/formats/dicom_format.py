"""DICOM waveform objects (12-lead ECG, general ECG, ambulatory) read with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgllm.io.errors import HeaderError, UnsupportedFormatError
from ecgllm.io.formats.raw import UNIT_TO_MV, RawRecord


def _channel_name(channel) -> str:
    try:
        source = channel.ChannelSourceSequence[0]
        return str(source.CodeMeaning or source.CodeValue)
    except (AttributeError, IndexError):
        return str(getattr(channel, "ChannelLabel", "?"))


def _unit_scale(channel) -> float:
    try:
        code = str(channel.ChannelSensitivityUnitsSequence[0].CodeValue).lower()
    except (AttributeError, IndexError):
        return 1e-3  # DICOM ECG waveforms are in µV unless stated otherwise
    return UNIT_TO_MV.get(code, 1e-3)


def read_dicom(path: Path) -> RawRecord:
    """Read the longest rhythm group of a DICOM ECG (median-beat groups are skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise UnsupportedFormatError(path, f"is not a DICOM file ({exc}).") from None
    except Exception as exc:
        raise HeaderError(path, f"could not be parsed as DICOM ({type(exc).__name__}: {exc}).",
                          "The file may be truncated or corrupt.") from None
    groups = getattr(ds, "WaveformSequence", None)
    if not groups:
        raise UnsupportedFormatError(path, f"is a DICOM {getattr(ds, 'Modality', '')} object without waveform data.",
                                     "Export the ECG as a DICOM waveform (12-lead ECG IOD).")
    durations = []
    for g in groups:
        try:
            durations.append(float(g.NumberOfWaveformSamples) / float(g.SamplingFrequency))
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            durations.append(-1.0)
    index = int(np.argmax(durations))
    group = groups[index]
    try:
        data = ds.waveform_array(index)  # [samples, channels], sensitivity applied
    except Exception as exc:
        raise HeaderError(path, f"has waveform data that pydicom cannot decode ({type(exc).__name__}: {exc}).",
                          "The file may be truncated or corrupt.") from None
    channels = list(group.ChannelDefinitionSequence)
    scale = np.array([_unit_scale(c) for c in channels], dtype=np.float64)
    names = [_channel_name(c) for c in channels]
    meta = {"dicom_group": index, "modality": str(getattr(ds, "Modality", ""))}
    for key, attr in (("age", "PatientAge"), ("sex", "PatientSex"), ("record_id", "SOPInstanceUID")):
        value = getattr(ds, attr, None)
        if value:
            meta[key] = str(value)
    return RawRecord(signal=(np.asarray(data, dtype=np.float64) * scale).T.astype(np.float32),
                     fs=float(group.SamplingFrequency), names=names, meta=meta)
