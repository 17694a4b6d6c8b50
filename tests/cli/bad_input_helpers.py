"""What every bad-input case asserts: a non-zero exit, one message line naming the file or
setting, no traceback (the error was handled, not raised), and nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

from lrmil.cli.main import app
from typer.testing import CliRunner


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines_of(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def assert_handled(result) -> None:
    """Non-zero exit through the CLI's error path: no exception escaped (CliRunner would hold
    it in result.exception and a user would have seen its traceback)."""
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}")
    assert "Traceback" not in result.output


def assert_one_line(result, *names: object) -> str:
    """The whole output is one `error:` line that names each of `names`."""
    assert_handled(result)
    lines = lines_of(result)
    assert len(lines) == 1, result.output
    assert result.output.strip("\n") == lines[0], repr(result.output)  # no blank line either
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def assert_one_error_after_work(result, *names: object) -> str:
    """An error once work has begun (a progress bar or notes printed before it): handled, and
    exactly one `error:` line, naming each of `names`."""
    return _the_one_line(result, "error:", names)


def assert_usage_error(result, command: str, *names: object) -> str:
    """A mistyped command line: exit 2, nothing on stdout, one `error: lrmil <command>:` line on
    stderr naming each of `names` (not Click's multi-line box); command "" is `lrmil` itself."""
    assert result.exit_code == 2, result.output
    assert result.stdout == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    path = f"lrmil {command}" if command else "lrmil"
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert lines[0].endswith(f"(see '{path} --help')"), lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def assert_one_failure(result, *names: object) -> str:
    """A per-slide run with one bad slide: exit 1, exactly one `failed:` line naming it."""
    return _the_one_line(result, "failed:", names)


def _the_one_line(result, prefix: str, names: tuple[object, ...]) -> str:
    """A handled run's only line starting with `prefix`, checked to name each of `names`."""
    assert_handled(result)
    found = [line for line in lines_of(result) if line.startswith(prefix)]
    assert len(found) == 1, result.output
    for name in names:
        assert str(name) in found[0], (name, found[0])
    return found[0]


def files_under(folder: Path) -> list[str]:
    """Every file below `folder` (relative), for 'nothing partial left' checks."""
    if not folder.exists():
        return []
    return sorted(str(Path(root, f).relative_to(folder))
                  for root, _, files in os.walk(folder) for f in files)


def no_partial_files(folder: Path) -> None:
    """No temporary or half-written file below `folder`."""
    left = [f for f in files_under(folder) if ".tmp" in f or f.startswith(".write-test")]
    assert not left, left


def disk_full(monkeypatch, *names: str) -> None:
    """Every atomic write (lrmil.utils.atomic) of a file whose name is one of `names` fails as
    on a full disk: ENOSPC naming no file, as write() raises it; the others go through."""
    import errno

    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name in names:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def unreadable(monkeypatch, path: Path) -> None:
    """`path` cannot be opened, as after `chmod 000` for a user other than root (the tests may
    run as root, who reads it anyway): lrmil.wsi's first read of a slide gets EACCES."""
    import builtins
    import errno

    from lrmil.wsi import backends

    def guarded(file, *args, **kwargs):
        if Path(file).resolve() == path.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(backends, "open", guarded, raising=False)
