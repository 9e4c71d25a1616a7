"""Dataset builders: official on-disk layouts in, one instruction schema out (Hugging Face `datasets`)."""

# Lazy "module:function" strings: importing the registry imports no builder.
BUILDERS: dict[str, str] = {
    "abaw": "data_builders.abaw:build",
    "bah": "data_builders.bah:build",
    "rafdb": "data_builders.images:build_rafdb",
    "affectnet": "data_builders.images:build_affectnet",
    "dfew": "data_builders.videos:build_dfew",
    "mafw": "data_builders.videos:build_mafw",
}

# The tasks each dataset's builder makes (`--task` asks for a subset).
TASKS: dict[str, tuple[str, ...]] = {"abaw": ("expr", "au", "va"), "bah": ("ah",)}


def tasks_of(name: str) -> tuple[str, ...]:
    return TASKS.get(name, ("expr",))


def get_builder(name: str):
    """`build(options, report, progress=None) -> samples` for dataset `name`: the dataset's own parser followed by
    the checks every builder shares (`common.check_samples`: repeated and conflicting samples, split overlap)."""
    import functools
    import importlib

    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(BUILDERS)}")
    module, function = BUILDERS[name].split(":")
    parse = getattr(importlib.import_module(module), function)

    @functools.wraps(parse)
    def build(options, report, progress=None):
        from data_builders.common import check_samples

        return check_samples(parse(options, report, progress), options, report)

    return build
