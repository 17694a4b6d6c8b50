"""`lrmil info`: versions, the build, devices, and optional runtimes."""

from __future__ import annotations

from lrmil.cli.main import app


@app.command()
def info() -> None:
    """Print versions, whether CUDA kernels were compiled in (and for which archs), the devices
    seen, and whether ONNX Runtime and TensorRT import."""
    from rich.console import Console
    from rich.table import Table

    from lrmil.info import collect

    table = Table(title="lrmil", show_header=False)
    for key, value in collect().items():
        table.add_row(key, str(value))
    Console().print(table)
