"""HTTP layer: knows HTTP, never MLX."""
