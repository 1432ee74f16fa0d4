"""Rewrite the request-field table in README.md and mlx_server/api/FIELDS.md from the code."""

from __future__ import annotations

from pathlib import Path

from mlx_server.api.fields import render_policy_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    table = render_policy_table()
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index("<!-- fields-table -->\n") + len("<!-- fields-table -->\n")
    end = text.index("<!-- /fields-table -->")
    readme.write_text(text[:start] + table + text[end:])
    fields = ROOT / "mlx_server" / "api" / "FIELDS.md"
    text = fields.read_text()
    fields.write_text(text[: text.index("| Field | Policy | Notes |")] + table)


if __name__ == "__main__":
    main()
