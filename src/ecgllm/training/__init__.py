"""Training: YAML recipes over dataclass configs, one loop on HF Accelerate, atomic checkpoints, exact resume."""
