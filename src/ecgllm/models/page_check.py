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

A second view, the page's texture (a check fitted with ``texture``): the same distance on descriptors of the image
encoder's first feature maps (`TEXTURE_LAYERS`; per channel the mean, maximum, spread and region means of
`ecgllm.models.image_quality.page_descriptors`), with its own typical distance from the same held-out renders. A
picture's distance is the larger of the two, the texture's expressed in the tokens' units (its distance times the
tokens' typical over its own) and weighed by `TEXTURE_WEIGHT`, so the thresholds and messages stay as they were. Why:
the pooled tokens are what the encoder learned to make of an ECG page, and an encoder also trained against the
records' labels (`image_encoder_truth_more`) put a page of text among typical ECG pages by its tokens
(`benchmarks/results/image_encoder_truth_more_not_shipped.json`); strokes of letters and a trace on a grid differ in
the first feature maps, before label training shaped much. Why the weight: photographs of real printouts differ from
the renderer's pages in paper, light and lens, which the first feature maps see; at full weight the view warned on
all 20 real printouts in ../shared (their texture lay 1.0-1.2 times its typical distance; seen before the weight was
set, so these printouts no longer judge it). At half weight the view warns from twice its typical distance and refuses
from three times: it catches what is no ECG page at all and leaves photographs of ECGs to the tokens.
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
TEXTURE_LAYERS = (3,)    # the image encoder's `features` whose output the texture view reads: the stem, after its
#                          max-pool (24 maps of strokes and grid)
TEXTURE_WEIGHT = 0.5     # the texture view's distance counts at half (see the module's note)


class NotAnECGPageError(InputError):
    """The picture is too unlike any ECG page to be read as one."""


def page_features(tokens: torch.Tensor) -> np.ndarray:
    """Image tokens [B, N, D] -> [B, 2D] float64: their mean and maximum over the N tokens."""
    return torch.cat([tokens.float().mean(1), tokens.float().amax(1)], -1).double().cpu().numpy()


def page_readings(encoder, pixels: torch.Tensor, layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """Pictures [B, 1, H, W] through an image encoder once: their token features (`page_features`) and, where
    ``layers`` names feature maps (`PageCheck.layers`), their texture descriptors; what a check is fitted on and
    what it reads."""
    from ecgllm.models.image_quality import page_descriptors

    tokens, kept = encoder.encode(pixels, keep=layers)
    return page_features(tokens), (page_descriptors(kept).double().numpy() if layers else None)


def _reference(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision (inverse of the shrunk covariance) of reference features."""
    mean = train.mean(0)
    cov = np.cov(train - mean, rowvar=False)
    cov += SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    return mean, np.linalg.inv(cov)


def _mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = np.atleast_2d(features) - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", centred, precision, centred))


class PageCheckReadingError(InputError, ValueError):
    """A page check fitted on tokens read at another view shift than the image encoder's."""


class PageCheck:
    """``texture``: (mean, precision, typical distance) of the texture view, or None (a check of the tokens alone,
    as every check fitted before the view existed). ``view_shift``: the image encoder's view shift the check was
    fitted on (`ImageEncoderConfig.view_shift`: the tokens it compares depend on it), None for a check saved before
    it was recorded."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray, typical: float, refuse: float,
                 texture: tuple[np.ndarray, np.ndarray, float] | None = None, view_shift: int | None = None) -> None:
        self.mean, self.precision, self.typical, self.refuse = mean, precision, float(typical), float(refuse)
        self.texture, self.view_shift = texture, view_shift

    @property
    def layers(self) -> tuple[int, ...]:
        """The image encoder's feature maps the check reads besides its tokens (none without the texture view)."""
        return TEXTURE_LAYERS if self.texture is not None else ()

    @classmethod
    def fit(cls, train: np.ndarray, held_out: np.ndarray, train_texture: np.ndarray | None = None,
            held_out_texture: np.ndarray | None = None, view_shift: int | None = None) -> "PageCheck":
        """``train``: features of training renders (the reference); ``held_out``: of renders never trained on
        (they set the thresholds); the ``*_texture`` descriptors of the same renders add the texture view."""
        mean, precision = _reference(train)
        typical = float(np.percentile(_mahalanobis(held_out, mean, precision), TYPICAL_PERCENTILE))
        texture = None
        if train_texture is not None and held_out_texture is not None:
            t_mean, t_precision = _reference(train_texture)
            t_typical = float(np.percentile(_mahalanobis(held_out_texture, t_mean, t_precision), TYPICAL_PERCENTILE))
            texture = (t_mean, t_precision, t_typical)
        return cls(mean, precision, typical, REFUSE_FACTOR * typical, texture, view_shift)

    def distance(self, features: np.ndarray, texture: np.ndarray | None = None) -> np.ndarray:
        """Distances of pictures from their token ``features`` (`page_features`) and, for a check with the texture
        view, their ``texture`` descriptors: the larger of the two views, in the tokens' units, the texture's weighed by
        `TEXTURE_WEIGHT`."""
        distance = _mahalanobis(features, self.mean, self.precision)
        if self.texture is None:
            return distance
        if texture is None:
            raise ValueError("this page check also reads the page's texture: give the descriptors of the image "
                             f"encoder's feature maps {TEXTURE_LAYERS} (`EcgLanguageModel.page_distances` does)")
        t_mean, t_precision, t_typical = self.texture
        texture_distance = _mahalanobis(texture, t_mean, t_precision) * self.typical / t_typical
        return np.maximum(distance, TEXTURE_WEIGHT * texture_distance)

    def verdict(self, distance: float) -> str:
        """"typical", "unlike" (answered with a warning) or "not an ECG page" (refused)."""
        if distance > self.refuse:
            return "not an ECG page"
        return "unlike" if distance > self.typical else "typical"

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(folder) / PAGE_CHECK_FILE
        arrays = {"mean": self.mean, "precision": self.precision, "thresholds": np.array([self.typical, self.refuse])}
        if self.texture is not None:
            t_mean, t_precision, t_typical = self.texture
            arrays.update(texture_mean=t_mean, texture_precision=t_precision, texture_typical=np.array([t_typical]),
                          texture_layers=np.array(TEXTURE_LAYERS))
        if self.view_shift is not None:
            arrays["view_shift"] = np.array([self.view_shift])
        save_file(arrays, str(path))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "PageCheck | None":
        path = Path(folder) / PAGE_CHECK_FILE
        if not path.exists():
            return None
        from safetensors.numpy import load_file

        saved = load_file(str(path))
        texture = None
        if "texture_mean" in saved:
            if tuple(saved["texture_layers"].tolist()) != TEXTURE_LAYERS:
                raise ValueError(f"{path}: its texture view reads the image encoder's feature maps "
                                 f"{tuple(saved['texture_layers'].tolist())}; this package reads {TEXTURE_LAYERS}: fit "
                                 "it again (scripts/fit_page_check.py)")
            texture = (saved["texture_mean"], saved["texture_precision"], float(saved["texture_typical"][0]))
        view_shift = int(saved["view_shift"][0]) if "view_shift" in saved else None
        return cls(saved["mean"], saved["precision"], *saved["thresholds"].tolist(), texture=texture,
                   view_shift=view_shift)

    def check_reading(self, view_shift: int, where: str = "the page check") -> None:
        """`PageCheckReadingError` unless the check was fitted on tokens read at ``view_shift`` (a check that did not
        record its shift passes): compared with tokens read otherwise, its distances and thresholds mean nothing."""
        if self.view_shift is not None and self.view_shift != view_shift:
            raise PageCheckReadingError(
                f"{where} was fitted on pictures read at view shift {self.view_shift}, but the image encoder reads "
                f"them at {view_shift}: fit it again for that reading on the distillation run "
                f"(scripts/fit_page_check.py RUN --view-shift {view_shift}), then attach it "
                f"(scripts/ship_checkpoint.py MODEL --image-encoder RUN)")


UNLIKE_WARNING = ("looks unlike the ECG pages this model learned to read (distance {distance:.1f} from its training "
                  f"renders; {TYPICAL_PERCENTILE} % of held-out renders lie within {{typical:.1f}}): the answer may be "
                  "unreliable. A flat, well-lit scan of the whole page reads best")


def refuse_message(which: str, distance: float, refuse: float) -> str:
    """``which``: "the picture", or "picture 2" of several."""
    return (f"{which} could not be read as an ECG page (distance {distance:.1f} from the ECG pages "
            f"the model learned from, beyond the {refuse:.1f} up to which it reads one). Send a photograph or scan "
            f"of the whole printed 12-lead page, or the signal file.")
