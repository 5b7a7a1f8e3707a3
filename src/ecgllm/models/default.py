"""Where the default checkpoint lives: ``$ECGLLM_MODEL`` when set, else the one shipped in the package."""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "checkpoint"


def default_checkpoint() -> Path | None:
    """The default checkpoint folder, or None when this installation has none."""
    override = os.environ.get("ECGLLM_MODEL")
    path = Path(override) if override else SHIPPED_CHECKPOINT
    return path if (path / "config.json").exists() else None
