"""Drawing ECGs: paper-style renders (clinical layouts, grid, calibration, seeded distortions) and a readable
multi-lead plot."""

from ecgllm.render.augment import AUGMENTATIONS, augmentation_table
from ecgllm.render.paper import LAYOUTS, PaperGeometry, PaperStyle, RenderOptions, render_paper
from ecgllm.render.plot import plot_ecg
from ecgllm.render.render import RenderedECG, render_ecg

__all__ = ["plot_ecg", "render_ecg", "render_paper", "RenderedECG", "RenderOptions", "PaperStyle", "PaperGeometry",
           "LAYOUTS", "AUGMENTATIONS", "augmentation_table"]
