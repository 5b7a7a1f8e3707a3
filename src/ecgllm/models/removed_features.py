"""Features ecgllm no longer has: the config keys they left in older model folders and run states."""

from __future__ import annotations

from ecgllm.errors import InputError

# Keys older model folders and run states still carry: their "off" values are dropped when read.
REMOVED_CONFIG_KEYS = {"n_strata": 0, "stratum_prior": []}


class RemovedFeatureError(InputError, ValueError):
    """A model folder or run state was made with a feature ecgllm no longer has."""


def without_removed_keys(config: dict, where: str) -> dict:
    """``config`` (a saved `EcgLMConfig`) without the keys of removed features at their "off" value; a model
    trained with one switched on cannot be loaded, and says so (``where``: the file it came from)."""
    config = dict(config)
    for key, off in REMOVED_CONFIG_KEYS.items():
        if key in config and config.pop(key) not in (off, None):
            raise RemovedFeatureError(
                f"{where}: this model was trained with the stratified de-biasing (model.{key}), which ecgllm no "
                f"longer has: it fed the true severity stratum, computed from the very labels the answers come "
                f"from, as an input. Retrain with debias: ipw or intervention")
    return config
