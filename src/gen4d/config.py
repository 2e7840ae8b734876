"""Typed configurations: dataclass defaults <- a named preset <- command-line values <- ``key=value`` overrides."""

from __future__ import annotations

from omegaconf import OmegaConf

from . import Gen4DError


def merge_config(schema, presets: dict[str, list[str]], preset: str, overrides: list[str], base: dict | None = None):
    """Dataclass defaults <- named preset <- ``base`` (CLI flags) <- ``key=value`` overrides; errors name the key."""
    if preset not in presets:
        raise Gen4DError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    try:
        cfg = OmegaConf.merge(
            OmegaConf.structured(schema), OmegaConf.from_dotlist(presets[preset]), OmegaConf.create(base or {}),
            OmegaConf.from_dotlist(overrides),
        )
    except Exception as e:  # omegaconf raises several types; all mean a bad key or value
        raise Gen4DError(f"bad configuration override: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(cfg)


def config_yaml(cfg) -> str:
    """The fully resolved configuration as YAML (what ``DIR/config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_section(schema, values: dict | None):
    """``values`` (plain containers, e.g. a section of a run's config.yaml) as a ``schema`` dataclass."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values or {}))
