"""mlx_server: a local OpenAI-compatible vision-language-model server on MLX."""

__version__ = "0.1.0"
