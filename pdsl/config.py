"""Training config: data, not code.

``pdsl/defaults.yaml`` lists every key with a comment (meaning, unit, paper reference). A run is
configured by ``defaults ← config file ← KEY=VALUE overrides``::

    cfg = load_config("pipeline/configs/demo.yaml", ["solver.base_lr=0.02", "model.acl=false"])
    cfg.solver.base_lr        # 0.02  (attribute or item access)
    save_config(cfg, run_dir / "config.yaml")

Values of overrides are parsed as YAML (``0.02`` → float, ``[480, 512]`` → list, ``null`` →
None, ``false`` → bool). Every value is checked against the type of its default (an int is
accepted where a float is expected; a ``null`` default accepts anything). An unknown key, in a file
or an override, raises :class:`ConfigError` listing the valid keys of its section.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from .errors import ConfigError

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")

# Keys whose value must be one of a few words (checked after merging).
CHOICES = {
    "cues.source": ("cache", "online"),
    "solver.optimizer": ("sgd", "adamw"),
    "cues.degenerate": ("box", "ignore", "keep"),
    "cues.reproject": ("auto", "warp", "cut"),
    "cues.seed_source": ("bank", "mcg"),
    # the switches between the paper's text and the authors' code (first value = the authors'
    # code, the default of pdsl/defaults.yaml; README "Paper vs authors' code" lists both);
    # PDSLNet checks its arguments against these too
    "model.mil_reduction": ("mean", "sum"),
    "model.refine_pseudo_box": ("regressed", "raw"),
    "model.refine_weight": ("image_score", "top_score"),
    "model.refine_box_loss": ("weighted_l1", "smooth_l1", "none"),
    "model.mask_targets": ("binary", "soft"),
    "model.mask_specific_weight": ("none", "image_score"),
    "model.acl_target": ("matched_top", "own"),
    "model.box_pooler": ("roipool", "roialign"),
    "model.learning": ("parallel", "cascade"),
    "model.mask0_channels": ("per_class", "single"),
    "model.seed_pool": ("foreground", "all"),
    "model.mask_loss_mean": ("batch", "image"),
    "train.device": ("auto", "cpu", "cuda"),
    "solver.amp": ("off", "fp16", "bf16"),
}


def _amp_word(value):
    """``solver.amp``: the words off | fp16 | bf16; the booleans of older configs mean
    ``true`` = fp16, ``false`` = off (YAML also reads a bare ``off`` as false)."""
    if isinstance(value, bool):
        return "fp16" if value else "off"
    return value


# Keys whose value is rewritten before type checking (backward compatibility).
NORMALIZE = {"solver.amp": _amp_word}

# Keys added with a default that changes behaviour: a config saved before the key existed (a run
# directory's config.yaml, a checkpoint's or a release's config) keeps the value it was trained
# with, given here, instead of the new default (see ``saved=`` of :func:`load_config`).
LEGACY = {
    "model.mask0_channels": "single",
    "model.seed_pool": "all",
    "model.mask_loss_mean": "image",
    "model.mask_sampling_ratio": 2,
}


def _has_key(d: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return False
        d = d[part]
    return True


def legacy_values(saved: dict) -> dict:
    """``{dotted key: value}`` of the :data:`LEGACY` keys that the saved config ``saved`` lacks:
    what a run made before those keys existed was trained with."""
    return {k: v for k, v in LEGACY.items() if not _has_key(saved, k)}


def _apply(cfg: "Config", values: dict) -> None:
    for key, v in values.items():
        _merge(cfg, _nest(key, v), "legacy defaults")


class Config(dict):
    """A nested dict whose keys can also be read as attributes (``cfg.solver.base_lr``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r} (valid: {', '.join(self)})") from None

    def __setattr__(self, name, value):
        self[name] = value

    def __deepcopy__(self, memo):
        return Config({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __reduce__(self):  # pickles as a plain nested dict rebuilt into Configs
        return (_to_config, (to_dict(self),))

    def get_path(self, dotted: str):
        node = self
        for part in dotted.split("."):
            node = node[part]
        return node


def _to_config(d):
    if isinstance(d, dict):
        return Config({k: _to_config(v) for k, v in d.items()})
    return d


def to_dict(cfg) -> dict:
    """Plain nested dicts/lists (for YAML, JSON and checkpoints)."""
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _read_yaml(path) -> dict:
    from .io import read_data_file

    path = Path(path)
    d = read_data_file(path, "config", ConfigError, fmt="yaml")
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"config {path}: top level must be a mapping of sections")
    return d


def default_config() -> Config:
    """The defaults of ``pdsl/defaults.yaml``."""
    return _to_config(_read_yaml(DEFAULTS_PATH))


def _type_name(v) -> str:
    return "null" if v is None else type(v).__name__


def _coerce(key: str, default, value, where: str):
    """``value`` checked against the type of ``default`` (int promoted to float)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple))
        if ok:
            value = list(value)
            if default and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                               for x in default):
                ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
                if ok and all(isinstance(x, float) for x in default):
                    value = [float(x) for x in value]
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}: {key} must be {_type_name(default)} like its default "
                          f"{default!r}, got {_type_name(value)} {value!r}")
    return value


def _merge(base: Config, update: dict, where: str, prefix: str = "") -> None:
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in base:
            section = prefix[:-1] or "top level"
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys of {section}: "
                              f"{', '.join(base)}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: {key} is a section ({', '.join(base[k])}), got "
                                  f"{_type_name(v)} {v!r}")
            _merge(base[k], v, where, key + ".")
        else:
            if key in NORMALIZE:
                v = NORMALIZE[key](v)
            base[k] = _coerce(key, base[k], v, where)


def parse_override(item: str) -> tuple[str, object]:
    """``"solver.base_lr=0.02"`` → ``("solver.base_lr", 0.02)`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. solver.base_lr=0.005")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
    return key, value


def _nest(key: str, value) -> dict:
    d = value
    for part in reversed(key.split(".")):
        d = {part: d}
    return d


def validate(cfg: Config) -> None:
    """Checks that span keys or restrict a value to a few words."""
    for key, choices in CHOICES.items():
        v = cfg.get_path(key)
        if v not in choices:
            raise ConfigError(f"config: {key} must be one of {', '.join(choices)}, got {v!r}")
    s, i = cfg.solver, cfg.input
    for key in ("images_per_step", "images_per_gpu", "max_iter"):
        if s[key] < 1:
            raise ConfigError(f"config: solver.{key} must be >= 1, got {s[key]}")
    if s.images_per_step % s.images_per_gpu:
        raise ConfigError(f"config: solver.images_per_step ({s.images_per_step}) must be a "
                          f"multiple of solver.images_per_gpu ({s.images_per_gpu})")
    if list(s.steps) != sorted(s.steps):
        raise ConfigError(f"config: solver.steps must be increasing, got {s.steps}")
    if not i.train_scales or not i.test_scales:
        raise ConfigError("config: input.train_scales and input.test_scales must not be empty")
    if not 0 < i.crop <= 1:
        raise ConfigError(f"config: input.crop must be in (0, 1], got {i.crop}")
    if i.hsv_jitter < 1:
        raise ConfigError(f"config: input.hsv_jitter must be >= 1 (1 = off), got {i.hsv_jitter}")
    if i.max_proposals < 1:
        raise ConfigError(f"config: input.max_proposals must be >= 1, got {i.max_proposals}")
    if len(i.pixel_mean) != 3 or len(i.pixel_std) != 3:
        raise ConfigError("config: input.pixel_mean and input.pixel_std need 3 values (RGB)")
    if not 0 < i.test_nms <= 1:
        raise ConfigError(f"config: input.test_nms must be in (0, 1], got {i.test_nms}")
    if cfg.model.learning == "cascade" and cfg.model.acl:
        raise ConfigError("config: model.learning=cascade needs model.acl=false (ACL, eq. 6-8, "
                          "couples the parallel branches; the cascade has no feedback)")
    if not 0 <= cfg.model.freeze_at <= 5:
        raise ConfigError(f"config: model.freeze_at must be in 0..5 (5 = whole backbone), got "
                          f"{cfg.model.freeze_at}")
    if cfg.train.checkpoint_period < 1 or cfg.train.log_period < 1:
        raise ConfigError("config: train.checkpoint_period and train.log_period must be >= 1")


def load_config(path: str | os.PathLike | None = None, overrides=(),
                saved: dict | None = None) -> Config:
    """Resolve ``defaults ← file at path (if any) ← overrides`` ("a.b=value" strings or
    ``(key, value)`` pairs) and validate. ``saved``: the config a run directory already holds
    (resuming it): keys it lacks start from the values it was trained with (:data:`LEGACY`)
    instead of today's defaults."""
    cfg = default_config()
    if saved is not None:
        _apply(cfg, legacy_values(saved))
    if path is not None:
        _merge(cfg, _read_yaml(path), f"config {path}")
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _merge(cfg, _nest(key, value), f"override {key}={value!r}")
    validate(cfg)
    return cfg


def config_from_dict(d: dict) -> Config:
    """A config saved in a checkpoint or run dir, merged onto the current defaults."""
    cfg = default_config()
    _apply(cfg, legacy_values(d))  # keys it predates: the values it was trained with
    _merge(cfg, d, "saved config")
    validate(cfg)
    return cfg


def dump_config(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=100)


def save_config(cfg, path) -> None:
    """Write the resolved config as YAML, atomically."""
    from .io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(dump_config(cfg))
