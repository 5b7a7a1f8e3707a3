"""Is this picture an ECG page like those the image encoder learned from? A distance, not a guess.

A photo of anything reaches the image encoder, and the LLM answers whatever tokens come out, confidently. The
check measures how far the picture's pooled image tokens (mean and maximum over the tokens) lie from those of
the distillation's training renders: the Mahalanobis distance under their mean and (shrunk) covariance. Two
thresholds come from renders the encoder never trained on (PTB-XL fold 9 records of ECG-QA train patients, clean
and distorted; no ECG-QA valid or test record), never from real printouts, which a hidden set judges:

- ``typical``: the `TYPICAL_PERCENTILE` th percentile of those held-out renders' distances. A picture beyond it
  is answered with a stated warning that it looks unlike the pages the model learned from (low confidence); one
  held-out render in a hundred gets it too (the largest distance is one outlier's, far too lax a bound);
- ``refuse``: `REFUSE_FACTOR` times that. A picture beyond it is not read at all (`NotAnECGPageError`): a blank
  page, a photograph of something else.

Real printouts come from other printers and cameras than the renderer, so some sit beyond ``typical``: they are
answered, with the warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ecgllm.errors import InputError

PAGE_CHECK_FILE = "page_check.safetensors"
TYPICAL_PERCENTILE = 99  # of the held-out renders' distances: beyond it, a picture is answered with a warning
REFUSE_FACTOR = 1.5      # times that: beyond it, a picture is refused
SHRINKAGE = 1e-3         # covariance + SHRINKAGE x mean variance: the pooled tokens are many, the renders few


class NotAnECGPageError(InputError):
    """The picture is too unlike any ECG page to be read as one."""


def page_features(tokens: torch.Tensor) -> np.ndarray:
    """Image tokens [B, N, D] -> [B, 2D] float64: their mean and maximum over the N tokens."""
    return torch.cat([tokens.float().mean(1), tokens.float().amax(1)], -1).double().cpu().numpy()


class PageCheck:
    def __init__(self, mean: np.ndarray, precision: np.ndarray, typical: float, refuse: float) -> None:
        self.mean, self.precision, self.typical, self.refuse = mean, precision, float(typical), float(refuse)

    @classmethod
    def fit(cls, train: np.ndarray, held_out: np.ndarray) -> "PageCheck":
        """``train``: features of training renders (the reference); ``held_out``: of renders never trained on
        (they set the thresholds)."""
        mean = train.mean(0)
        cov = np.cov(train - mean, rowvar=False)
        cov += SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
        check = cls(mean, np.linalg.inv(cov), 0.0, 0.0)
        typical = float(np.percentile(check.distance(held_out), TYPICAL_PERCENTILE))
        return cls(mean, check.precision, typical, REFUSE_FACTOR * typical)

    def distance(self, features: np.ndarray) -> np.ndarray:
        centred = np.atleast_2d(features) - self.mean
        return np.sqrt(np.einsum("ij,jk,ik->i", centred, self.precision, centred))

    def verdict(self, distance: float) -> str:
        """"typical", "unlike" (answered with a warning) or "not an ECG page" (refused)."""
        if distance > self.refuse:
            return "not an ECG page"
        return "unlike" if distance > self.typical else "typical"

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(folder) / PAGE_CHECK_FILE
        save_file({"mean": self.mean, "precision": self.precision,
                   "thresholds": np.array([self.typical, self.refuse])}, str(path))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "PageCheck | None":
        path = Path(folder) / PAGE_CHECK_FILE
        if not path.exists():
            return None
        from safetensors.numpy import load_file

        saved = load_file(str(path))
        return cls(saved["mean"], saved["precision"], *saved["thresholds"].tolist())


UNLIKE_WARNING = ("looks unlike the ECG pages this model learned to read (distance {distance:.1f} from its training "
                  f"renders; {TYPICAL_PERCENTILE} % of held-out renders lie within {{typical:.1f}}): the answer may be "
                  "unreliable. A flat, well-lit scan of the whole page reads best")


def refuse_message(which: str, distance: float, refuse: float) -> str:
    """``which``: "the picture", or "picture 2" of several."""
    return (f"{which} could not be read as an ECG page (distance {distance:.1f} from the ECG pages "
            f"the model learned from, beyond the {refuse:.1f} up to which it reads one). Send a photograph or scan "
            f"of the whole printed 12-lead page, or the signal file.")
