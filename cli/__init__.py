"""The `lrmil` command line (Typer), installed as `lrmil.cli`."""
