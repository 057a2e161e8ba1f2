"""The training engine: one Accelerate loop (optionally driving DeepSpeed) for every objective."""
