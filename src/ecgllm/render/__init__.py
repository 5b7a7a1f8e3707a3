"""Drawing ECGs: a readable multi-lead plot (paper-style renders come later in this package)."""

from ecgllm.render.plot import plot_ecg

__all__ = ["plot_ecg"]
