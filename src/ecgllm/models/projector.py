"""Projectors from encoder tokens to the LLM's embedding width, built by name (LLaVA's ``mm_projector``)."""

from __future__ import annotations

from torch import nn

PROJECTORS = ("linear", "mlp2x_gelu")


def build_projector(name: str, in_dim: int, out_dim: int) -> nn.Module:
    if name == "linear":
        return nn.Linear(in_dim, out_dim)
    if name == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise KeyError(f"unknown projector {name!r}; choose one of {PROJECTORS}")
