"""A YAML recipe read for `parse_recipe`: its fields with the line each is on, every problem one line naming the file.

    values, lines = read_recipe("train/recipes/sft_tiny_cpu.yaml")   # {"max_steps": 600, ...}, {"max_steps": 9, ...}

Refused, as `RECIPE[:LINE]: reason`: a missing file, a folder, a FIFO, socket or device (never opened, so nothing
blocks), a file over 1 MiB, bytes that are not UTF-8 text, YAML syntax errors (with the line), an empty recipe, one
that is not a mapping of `field: value`, a field name that is not text or is given twice, an `env:` that is not a
mapping of names to values.
"""

from __future__ import annotations

import os
import stat

MAX_BYTES = 1 << 20


def read_recipe(path: str) -> tuple[dict, dict[str, int]]:
    """The recipe's `field: value` mapping and each field's line (1-based)."""
    import yaml

    text = _read_text(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        reason = exc.problem or exc.context or "not valid YAML"
        if exc.context and exc.problem:  # "expected ',' or ']'" (while parsing a flow sequence on line 2)
            started = f" on line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            reason += f" ({exc.context}{started})"
        raise ValueError(f"{where}: YAML syntax error: {reason}") from None
    except yaml.reader.ReaderError as exc:  # a control character: YAML names its position, not its line
        line = text[: exc.position].count("\n") + 1
        raise ValueError(f"{path}:{line}: not valid YAML: character {exc.character!r} is not allowed") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ValueError(f"{path}: YAML nested too deeply to be a recipe") from None
    if root is None:
        raise ValueError(f"{path}: empty recipe; expected `field: value` lines (see train/recipes/)")
    if not isinstance(root, yaml.MappingNode) or not isinstance(values, dict):
        kind = {"SequenceNode": "a list", "ScalarNode": "a single value"}.get(type(root).__name__, "not a mapping")
        raise ValueError(
            f"{path}:{root.start_mark.line + 1}: a recipe is a mapping of `field: value` lines, this is {kind}"
        )
    lines: dict[str, int] = {}
    for key, _ in root.value:
        line = key.start_mark.line + 1
        if not isinstance(key, yaml.ScalarNode) or key.tag != "tag:yaml.org,2002:str":
            raise ValueError(f"{path}:{line}: a field name must be text, got {key.value!r:.40}")
        if key.value in lines:
            raise ValueError(f"{path}:{line}: {key.value} given twice (first on line {lines[key.value]})")
        lines[key.value] = line
    env = values.get("env")
    if "env" in values and (
        not isinstance(env, dict) or not all(isinstance(v, str | int | float | bool) for v in env.values())
    ):
        raise ValueError(
            f"{path}:{lines.get('env', 1)}: env: must be a mapping of NAME: value (environment variables)"
        )
    return values, lines


def _read_text(path: str) -> str:
    """The file's text, checked without opening anything that is not a regular file (a FIFO would block)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: recipe file not found") from None
    except OSError as exc:
        raise OSError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{path}: is a folder; --config takes a YAML recipe file (see train/recipes/)")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file (a FIFO, socket or device); --config takes a YAML recipe file")
    if info.st_size > MAX_BYTES:
        raise ValueError(f"{path}: {info.st_size} bytes, too large for a recipe (at most {MAX_BYTES})")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise OSError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); a recipe is a YAML file") from None


def command_line_fields(argv: list[str]) -> set[str]:
    """The fields given on the command line (`--max_steps 5`, `--max-steps=5`, `--no_resume`)."""
    names = set()
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.update({name, name.removeprefix("no_")})
    return names


def take_config(argv: list[str]) -> tuple[list[str], str | None]:
    """`argv` without `--config PATH` (or `--config=PATH`), and the path."""
    rest, paths = [], []
    tokens = iter(argv)
    for token in tokens:
        if token == "--config":
            path = next(tokens, None)
            if path is None or path.startswith("--"):
                raise ValueError("--config: no recipe file given (--config RECIPE.yaml)")
            paths.append(path)
        elif token.startswith("--config="):
            paths.append(token.split("=", 1)[1])
        else:
            rest.append(token)
    if len(paths) > 1:
        raise ValueError(f"--config: given {len(paths)} times ({', '.join(paths)}); a run takes one recipe")
    if paths and not paths[0]:
        raise ValueError("--config: no recipe file given (--config RECIPE.yaml)")
    return rest, (paths[0] if paths else None)
