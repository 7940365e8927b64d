"""Prints the README's method table from the method registry (the README must match it; a test
checks): python tools/method_table.py"""

from swag_onnx.methods import METHODS


def method_table() -> str:
    """Markdown: one row per registered method."""
    lines = ["| method | what it computes | needs | options | checked against |",
             "|---|---|---|---|---|"]
    for m in METHODS.values():
        summary = m.summary.replace("|", "\\|")  # a pipe would end the cell
        options = ", ".join(f"`{p.option}`" for p in m.params.values()) or "none"
        flags = " (`--meta`)" if m.meta else ""
        lines.append(f"| `{m.name}`{flags} | {summary} | {m.needs_text() or 'nothing'} | "
                     f"{options} | {m.reference} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(method_table())
