"""Tiling settings: the two magnifications, the patch size, the tissue thresholds and the
tissue-mask parameters, each with a default and validated once here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lrmil.errors import ConfigError
from lrmil.utils.configfile import read_settings


@dataclass(frozen=True, kw_only=True)
class TissueParams:
    """How the tissue mask is made from a low-magnification thumbnail.

    Saturation separates stained tissue from the white/grey glass; Otsu picks the threshold,
    floored by `min_saturation` so that a blank slide yields no tissue rather than noise."""

    mask_mag: float = 1.25  # magnification of the thumbnail the mask is computed on
    min_saturation: int = 20  # 0-255; floor under the Otsu threshold
    close_um: float = 16.0  # closing radius (joins nearby tissue), microns
    open_um: float = 16.0  # opening radius (removes specks and dust), microns
    min_tissue_mm2: float = 0.02  # tissue pieces smaller than this are dropped
    max_hole_mm2: float = 0.01  # holes smaller than this are filled

    def __post_init__(self) -> None:
        if not self.mask_mag > 0:
            raise ConfigError(f"tissue.mask_mag must be > 0, got {self.mask_mag}")
        if not 0 <= self.min_saturation <= 255:
            raise ConfigError(f"tissue.min_saturation must be in 0..255, got {self.min_saturation}")
        for name in ("close_um", "open_um", "min_tissue_mm2", "max_hole_mm2"):
            if not getattr(self, name) >= 0:  # NaN too
                raise ConfigError(f"tissue.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class TilingConfig:
    """The LR grid at `lr_mag` and, for each LR patch, its r x r HR children at `hr_mag`
    (r = hr_mag / lr_mag), all `patch_size` pixels at their own magnification."""

    lr_mag: float = 5.0
    hr_mag: float = 20.0
    patch_size: int = 256
    tissue_threshold: float = 0.25  # keep an LR patch whose tissue fraction is at least this
    child_threshold: float = 0.25  # a child is valid if its own tissue fraction is at least this
    tissue: TissueParams = field(default_factory=TissueParams)

    def __post_init__(self) -> None:
        if not (self.lr_mag > 0 and self.hr_mag > 0):
            raise ConfigError(
                f"--lr-mag and --hr-mag must be > 0, got {self.lr_mag}, {self.hr_mag}"
            )
        ratio = self.hr_mag / self.lr_mag
        if not math.isclose(ratio, round(ratio), rel_tol=1e-9) or round(ratio) < 2:
            raise ConfigError(
                f"--lr-mag {self.lr_mag:g} must divide --hr-mag {self.hr_mag:g} into an integer "
                f"ratio r >= 2 (got {ratio:g})"
            )
        if self.patch_size < 8:
            raise ConfigError(f"--patch-size must be at least 8 pixels, got {self.patch_size}")
        for name in ("tissue_threshold", "child_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}"
                )

    @property
    def r(self) -> int:
        return round(self.hr_mag / self.lr_mag)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "tiling config") -> TilingConfig:
        """Settings by name (tissue-mask ones under `tissue`), each refused naming `source`
        and the setting if it is unknown or of the wrong type."""
        values = dict(values)
        tissue = values.pop("tissue", None) or {}
        if not isinstance(tissue, dict):
            raise ConfigError(f"{source}: tissue must be a mapping of tissue-mask settings "
                              f"(tissue.mask_mag ...), got {tissue!r}")
        for given, allowed, prefix in ((values, cls, ""), (tissue, TissueParams, "tissue.")):
            types = {f.name: f.type for f in fields(allowed) if f.name != "tissue"}
            unknown = sorted(set(given) - set(types))
            if unknown:
                raise ConfigError(f"{source}: unknown setting(s) "
                                  f"{', '.join(prefix + name for name in unknown)}; known: "
                                  f"{', '.join(prefix + name for name in types)}")
            for name, value in given.items():
                number = isinstance(value, int if types[name] == "int" else (int, float))
                if not number or isinstance(value, bool):
                    kind = "an integer" if types[name] == "int" else "a number"
                    raise ConfigError(f"{source}: {prefix}{name} must be {kind}, got {value!r}")
        return cls(**values, tissue=TissueParams(**tissue))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Tiling settings from a YAML, TOML or JSON file: TilingConfig fields at the top level or
    under a `tile` section, tissue-mask parameters under `tissue`."""
    values = read_settings(path)
    section = values.get("tile", values)
    TilingConfig.from_dict(section, source=str(path))  # validate early, naming the file
    return section
