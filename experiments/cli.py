"""The command line of every experiment: absl flags and config files, every error in one line.

    if __name__ == "__main__":
        cli.run(main)        # instead of absl's app.run(main)

A config override that names no field (``--config.num_epoch=1``) fails inside
absl's flag parsing, before ``main`` runs, as a chained traceback; here it is
one line naming the field and the closest real one, exit status 2.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
from typing import NoReturn

from absl import app, flags

USAGE_ERROR = 2


def fail(message: object) -> NoReturn:
    """Prints "error: MESSAGE" (one line) on stderr and exits with status 2."""
    lines = str(message).splitlines() or [type(message).__name__]
    print(f"error: {lines[0]}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


def _config_file_value(argv: list[str], name: str):
    """The config of ``--NAME PATH[:VARIANT]`` in argv, loaded as ml_collections would (get_config);
    None if absent or unloadable."""
    for i, arg in enumerate(argv):
        spec = arg.split("=", 1)[1] if arg.startswith(f"--{name}=") else (
            argv[i + 1] if arg == f"--{name}" and i + 1 < len(argv) else None)
        if spec is None:
            continue
        path, _, variant = spec.partition(":")
        with contextlib.suppress(Exception):
            module_spec = importlib.util.spec_from_file_location("_config_file", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module.get_config(variant) if variant else module.get_config()
    return None


def _unknown_override(argv: list[str]) -> str | None:
    """The first "--NAME.FIELD[=VALUE]" of argv whose NAME is a config file flag and FIELD none of its
    config's fields, as a one-line message; None if every override names a field."""
    from ratebp_jax import runs

    for arg in argv[1:]:
        match = re.match(r"--(\w+)\.([\w.]+)(=|$)", arg)
        config = match and _config_file_value(argv, match.group(1))
        if config is None:
            continue
        fields = runs.config_fields(config)
        field = match.group(2)
        if field not in fields and not any(f.startswith(field + ".") for f in fields):
            return (f"--{match.group(1)}.{field}: the config has no field {field!r}"
                    f"{runs.suggest(field, fields)}")
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with its errors (unknown flags, unknown config fields, bad values) in one line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        message = _unknown_override(argv)
        if message is None:
            message = str(error).replace("\\n", " ").splitlines()[0]
        fail(f"{message} (see --help)")


def run(main) -> None:
    """absl's app.run(main) with parse_flags."""
    app.run(main, flags_parser=parse_flags)
