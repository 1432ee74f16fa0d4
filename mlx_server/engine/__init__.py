"""The MLX inference engine: knows MLX, never HTTP."""
