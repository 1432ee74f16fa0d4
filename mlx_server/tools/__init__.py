"""Tool-call formats: pure text in, ToolCall out. Imports nothing else from the package."""
