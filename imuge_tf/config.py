"""Typed configuration: YAML files -> frozen dataclasses, validated on load.

A config has five sections (`model`, `loss`, `attacks`, `data`, `train`). Every field has a
default, so a YAML file names only what it changes. Unknown keys, wrong types and values out
of range are `ConfigError`s that name the key and what is allowed.

Nothing below the factory sees these objects: `models/factory.py` unpacks them into the flat
keyword arguments of the layers and models, so every `get_config()` stays flat and `.keras`
files load without this module.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field

import yaml

# The shipped configs are package data (imuge_tf/configs/, which the repository's top-level
# configs/ links to), so that any install, editable or not, finds them from any folder.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

NORMS = ("group", "batch", "instance", "none")
# Attack names a config may use. The defaults are the paper's (section 3.2); the rest are opt-in.
PAPER_BENIGN_ATTACKS = ("identity", "noise", "blur", "rescale", "jpeg", "crop")
BENIGN_ATTACKS = PAPER_BENIGN_ATTACKS + ("median", "colour", "resize", "resize_jpeg", "blur_jpeg")
PAPER_TAMPER_KINDS = ("donor", "colour", "clone")
TAMPER_KINDS = PAPER_TAMPER_KINDS + ("copy_move", "splice", "removal")
RESIZE_METHODS = ("bilinear", "bicubic", "nearest", "area")
MASK_SHAPES = ("rectangle", "ellipse", "polygon")


# A decimal number in any spelling YAML files use, exponent without a dot included.
_DECIMAL = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes and the mechanisms of the paper's Table 3 (each one a switch)."""

    image_size: int = 128
    base_filters: int = 16
    max_filters: int = 256
    norm: str = "group"
    middle_dilations: tuple[int, ...] = (2, 4)
    discriminator_filters: int = 32
    verifier: bool = True
    discriminators: bool = True
    task_decoupling: bool = True
    progressive_recovery: bool = True
    local_feature_sharing: bool = True
    # Levers beyond the paper (docs/design.md and README "Levers"); the
    # defaults are the paper's setting.
    decoder_prefill: bool = False  # R corrects a push-pull fill of the hole instead of
    #                                painting it from nothing (tanh residual, zero-initialised)
    quantize_immunized: bool = False  # round I_M to 8 bits (straight-through), as it is saved
    context_shift: bool = False  # every U-Net also sees its input shifted by half the image,
    #                              so a region's content can be hidden in the opposite region
    carrier_amplitude: float = 0.0  # > 0: E adds a fixed +-1 pattern of this many 8-bit grey
    #                                 levels and V is fed its local strength (models/carrier.py)
    carrier_protect: bool = True  # E's learned residual cannot cancel the carrier
    hidden_thumbnail_step: float = 0.0  # > 0: I_M carries a thumbnail of I, written by QIM on
    #                                    cell means with this lattice step in grey levels; R's
    #                                    pre-fill reads it (models/hiding.py)
    hidden_thumbnail_block: int = 2  # the thumbnail's cell size in pixels

    def validate(self) -> None:
        _check(self.image_size >= 32 and self.image_size % 16 == 0, "model.image_size",
               "a multiple of 16, at least 32 (the U-Net halves the size four times)")
        _check(self.base_filters >= 4, "model.base_filters", "an integer >= 4")
        _check(self.max_filters >= self.base_filters, "model.max_filters", ">= model.base_filters")
        _check(self.norm in NORMS, "model.norm", f"one of {list(NORMS)}")
        _check(len(self.middle_dilations) >= 1 and all(d >= 1 for d in self.middle_dilations),
               "model.middle_dilations", "a non-empty list of dilation rates >= 1")
        _check(self.discriminator_filters >= 4, "model.discriminator_filters", "an integer >= 4")
        _check(0.0 <= self.carrier_amplitude <= 32.0, "model.carrier_amplitude",
               "a number of grey levels in [0, 32] (0 = no carrier)")
        _check(0.0 <= self.hidden_thumbnail_step <= 64.0, "model.hidden_thumbnail_step",
               "a number of grey levels in [0, 64] (0 = no hidden thumbnail)")
        _check(self.hidden_thumbnail_block >= 1
               and self.image_size % (2 * self.hidden_thumbnail_block) == 0,
               "model.hidden_thumbnail_block",
               "a cell size >= 1 that divides model.image_size into an even number of cells")


@dataclass(frozen=True)
class LossConfig:
    """Weights of eqs. 3, 6 and 8: L_G = L_rec + a L_cls + b L_dis, L_rec = L_R + g L_C,
    L_dis = L_DR + t L_DC."""

    classification_weight: float = 0.01  # alpha in eq. 3
    adversarial_weight: float = 0.005  # beta in eq. 3
    immunization_weight: float = 0.5  # gamma in eq. 6
    container_adversarial_weight: float = 0.5  # theta in eq. 8
    # 0 = the paper's flat L_C (MSE weighted by gamma). > 0 = a fidelity hinge: L_C is the mean
    # shortfall of PSNR(I, I_M) below this target in dB (weighted by gamma), so the encoder is
    # free above the target and held at it, instead of being pushed to an invisible residual.
    immunization_psnr_target: float = 0.0
    # 0 = the paper: E gets no L_cls gradient while decoupled and alpha * L_cls after. > 0 =
    # E always gets the L_cls gradient at this weight (V keeps the paper's schedule), so the
    # encoder learns a mark that the verifier can find from the first step.
    encoder_classification_weight: float = 0.0

    def validate(self) -> None:
        for name in ("classification_weight", "adversarial_weight", "immunization_weight",
                     "container_adversarial_weight", "encoder_classification_weight"):
            _check(getattr(self, name) >= 0, f"loss.{name}", "a number >= 0")
        _check(0.0 <= self.immunization_psnr_target <= 99.0, "loss.immunization_psnr_target",
               "0 (flat L_C) or a PSNR target in dB below 99")


@dataclass(frozen=True)
class AttackConfig:
    """The attack layer A: one tamper, then one benign attack per sample (paper section 3.2)."""

    skip_probability: float = 0.1
    benign: tuple[str, ...] = PAPER_BENIGN_ATTACKS
    tampers: tuple[str, ...] = PAPER_TAMPER_KINDS
    noise_stddev: float = 0.05
    blur_kernel_sizes: tuple[int, ...] = (3, 5)
    rescale_range: tuple[float, float] = (0.5, 2.0)
    jpeg_quality_range: tuple[int, int] = (50, 95)
    crop_keep_range: tuple[float, float] = (0.5, 0.9)
    clone_shift_range: tuple[float, float] = (0.1, 0.4)
    real_jpeg_probability: float = 0.0
    # Ranges of the opt-in attacks (used only when named in `benign` / `tampers`).
    median_kernel_sizes: tuple[int, ...] = (3, 5)
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    contrast_range: tuple[float, float] = (0.7, 1.3)
    saturation_range: tuple[float, float] = (0.7, 1.3)
    resize_range: tuple[float, float] = (0.5, 2.0)
    resize_methods: tuple[str, ...] = RESIZE_METHODS
    copy_move_shift_range: tuple[float, float] = (0.3, 0.7)
    copy_move_flip_probability: float = 0.5
    # Training-sample composition (applied by the model around the attack layer): the share
    # of samples fed to the attacks without immunization (verifier target: all ones), and the
    # share whose donor is the photo's own original, so that the donor/splice tampers become
    # residual removal (only the missing immunization marks the area).
    never_immunized_probability: float = 0.0
    residual_removal_probability: float = 0.0

    def validate(self) -> None:
        _check(0.0 <= self.skip_probability <= 1.0, "attacks.skip_probability",
               "a number in [0, 1]")
        _check(len(self.benign) > 0 and set(self.benign) <= set(BENIGN_ATTACKS),
               "attacks.benign", f"a non-empty list drawn from {list(BENIGN_ATTACKS)}")
        _check(len(self.tampers) > 0 and set(self.tampers) <= set(TAMPER_KINDS),
               "attacks.tampers", f"a non-empty list drawn from {list(TAMPER_KINDS)}")
        _check(0.0 <= self.noise_stddev <= 1.0, "attacks.noise_stddev", "a number in [0, 1]")
        odd_sizes = all(k >= 1 and k % 2 == 1 for k in self.blur_kernel_sizes)
        _check(odd_sizes and len(self.blur_kernel_sizes) > 0, "attacks.blur_kernel_sizes",
               "a non-empty list of odd sizes")
        _check_range(self.rescale_range, "attacks.rescale_range", 0.1, 4.0)
        _check_range(self.jpeg_quality_range, "attacks.jpeg_quality_range", 1, 100)
        _check_range(self.crop_keep_range, "attacks.crop_keep_range", 0.05, 1.0)
        _check_range(self.clone_shift_range, "attacks.clone_shift_range", 0.01, 0.99)
        _check(0.0 <= self.real_jpeg_probability <= 1.0, "attacks.real_jpeg_probability",
               "a number in [0, 1]")
        odd_sizes = all(k >= 3 and k % 2 == 1 for k in self.median_kernel_sizes)
        _check(odd_sizes and len(self.median_kernel_sizes) > 0, "attacks.median_kernel_sizes",
               "a non-empty list of odd sizes >= 3")
        _check_range(self.brightness_range, "attacks.brightness_range", -1.0, 1.0)
        _check_range(self.contrast_range, "attacks.contrast_range", 0.0, 10.0)
        _check_range(self.saturation_range, "attacks.saturation_range", 0.0, 10.0)
        _check_range(self.resize_range, "attacks.resize_range", 0.1, 4.0)
        _check(len(self.resize_methods) > 0 and set(self.resize_methods) <= set(RESIZE_METHODS),
               "attacks.resize_methods", f"a non-empty list drawn from {list(RESIZE_METHODS)}")
        _check_range(self.copy_move_shift_range, "attacks.copy_move_shift_range", 0.01, 0.99)
        _check(0.0 <= self.copy_move_flip_probability <= 1.0,
               "attacks.copy_move_flip_probability", "a number in [0, 1]")
        for name in ("never_immunized_probability", "residual_removal_probability"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"attacks.{name}", "a number in [0, 1]")


@dataclass(frozen=True)
class DataConfig:
    """How photos become training batches: crops, a donor stream, tamper masks."""

    load_size: int = 0  # shorter side kept in memory; 0 = 1.5 x image_size
    mask_area_range: tuple[float, float] = (0.10, 0.30)  # RST
    mask_largest_range: tuple[float, float] = (0.06, 0.16)  # RLT
    mask_max_regions: int = 4
    mask_shapes: tuple[str, ...] = MASK_SHAPES
    seed: int = 0

    def validate(self) -> None:
        _check(self.load_size >= 0, "data.load_size", "0 (automatic) or a size in pixels")
        _check_range(self.mask_area_range, "data.mask_area_range", 0.0, 1.0)
        _check_range(self.mask_largest_range, "data.mask_largest_range", 0.0, 1.0)
        _check(self.mask_max_regions >= 1, "data.mask_max_regions", "an integer >= 1")
        _check(len(self.mask_shapes) > 0 and set(self.mask_shapes) <= set(MASK_SHAPES),
               "data.mask_shapes", f"a non-empty list drawn from {list(MASK_SHAPES)}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the schedule of section 4.1 (in epochs of `steps_per_epoch` steps)."""

    batch_size: int = 8  # global, over all replicas
    learning_rate: float = 2e-4
    discriminator_learning_rate: float = 2e-4
    beta_1: float = 0.9
    epochs: int = 200
    steps_per_epoch: int = 1000
    stage_epochs: int = 20  # each progressive stage but the last
    fade_fraction: float = 0.5  # share of a stage over which the new segments fade in
    decoupling_epochs: int = 100  # task decoupling lifted after this many epochs
    keep_checkpoints: int = 3
    checkpoint_every_steps: int = 0  # 0 = at the end of every epoch only
    image_log_every_epochs: int = 1

    def validate(self) -> None:
        _check(self.batch_size >= 1, "train.batch_size", "an integer >= 1")
        _check(self.learning_rate > 0, "train.learning_rate", "a number > 0")
        _check(self.discriminator_learning_rate > 0, "train.discriminator_learning_rate",
               "a number > 0")
        _check(0.0 <= self.beta_1 < 1.0, "train.beta_1", "a number in [0, 1)")
        _check(self.epochs >= 1, "train.epochs", "an integer >= 1")
        _check(self.steps_per_epoch >= 1, "train.steps_per_epoch", "an integer >= 1")
        _check(self.stage_epochs >= 0, "train.stage_epochs", "an integer >= 0")
        _check(0.0 <= self.fade_fraction <= 1.0, "train.fade_fraction", "a number in [0, 1]")
        _check(self.decoupling_epochs >= 0, "train.decoupling_epochs", "an integer >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "an integer >= 1")
        _check(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", "an integer >= 0")
        _check(self.image_log_every_epochs >= 0, "train.image_log_every_epochs", "an integer >= 0")


@dataclass(frozen=True)
class Config:
    """A whole run: what is trained, on what, and how."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    attacks: AttackConfig = field(default_factory=AttackConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        for section in SECTIONS:
            getattr(self, section).validate()

    def to_dict(self) -> dict:
        """Plain Python types (lists for tuples), ready for YAML or JSON."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {
    "model": ModelConfig,
    "loss": LossConfig,
    "attacks": AttackConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


def _check(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"bad value for '{key}': expected {allowed}")


def _check_range(pair, key: str, low: float, high: float) -> None:
    _check(len(pair) == 2 and low <= pair[0] <= pair[1] <= high, key,
           f"[min, max] with {low} <= min <= max <= {high}")


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(value, annotation, key: str):
    """Checks one YAML value against a dataclass field type; returns it in that type."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value for '{key}': expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"bad value for '{key}': expected a list of {len(args)} values, "
                              f"got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"bad value for '{key}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"bad value for '{key}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str) and _DECIMAL.match(value.strip()):
            # YAML 1.1 (PyYAML) reads `5e-4` or `1E-4` as a string: only `5.0e-4` is a float.
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"bad value for '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"bad value for '{key}': expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"bad value for '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {annotation!r} for '{key}'")


def _build_section(cls, values, prefix: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"bad value for '{prefix}': expected a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"unknown key '{prefix}.{key}'; allowed keys in '{prefix}': "
                              f"{', '.join(allowed)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}")
    return cls(**kwargs)


def config_from_dict(values: dict) -> Config:
    """Builds and validates a Config from nested plain values (as parsed from YAML)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError("a config must be a mapping with the sections "
                          f"{', '.join(['name', *SECTIONS])}")
    allowed = ["name", *SECTIONS]
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown key '{key}'; allowed top-level keys: {', '.join(allowed)}")
    name = values.get("name", "custom")
    if not isinstance(name, str):
        raise ConfigError(f"bad value for 'name': expected a string, got {name!r}")
    sections = {s: _build_section(cls, values.get(s), s) for s, cls in SECTIONS.items()}
    config = Config(name=name, **sections)
    config.validate()
    return config


def apply_overrides(values: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Applies `section.key=value` strings (values parsed as YAML) to nested plain values."""
    values = _to_plain(dict(values or {}))
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"bad override '{override}': expected key=value, "
                              "e.g. train.epochs=5")
        key, raw = override.split("=", 1)
        key = key.strip()
        try:
            parsed = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"bad value in override '{override}': {error}") from None
        parts = key.split(".")
        if len(parts) == 1 and parts[0] == "name":
            values["name"] = parsed
            continue
        if len(parts) != 2:
            raise ConfigError(f"bad override key '{key}': expected section.key with a section "
                              f"from {', '.join(SECTIONS)}")
        section, field_name = parts
        if section not in SECTIONS:
            raise ConfigError(f"unknown key '{key}'; allowed sections: {', '.join(SECTIONS)}")
        section_values = dict(values.get(section) or {})
        section_values[field_name] = parsed
        values[section] = section_values
    return values


def resolve_config_path(path_or_name: str) -> str:
    """A path to a YAML file, or the name of a shipped config (`smoke`, `demo`, `paper`)."""
    if os.path.isfile(path_or_name):
        return path_or_name
    candidate = os.path.join(CONFIG_DIR, f"{path_or_name}.yaml")
    if os.path.isfile(candidate):
        return candidate
    raise ConfigError(f"config '{path_or_name}' not found: give a YAML file path or one of "
                      "smoke, demo, paper")


def load_config(path_or_name: str = "demo", overrides=()) -> Config:
    """Loads a YAML config (a path or a shipped name) and applies `key=value` overrides."""
    path = resolve_config_path(path_or_name)
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return config_from_dict(apply_overrides(values or {}, list(overrides)))


def differing_keys(a: Config, b: Config, ignore=()) -> list[str]:
    """Dotted keys whose values differ between two configs (for resuming a work directory)."""
    flat_a, flat_b = _flatten(a.to_dict()), _flatten(b.to_dict())
    return sorted(k for k in set(flat_a) | set(flat_b)
                  if k not in ignore and flat_a.get(k) != flat_b.get(k))


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
