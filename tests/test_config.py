"""gaccore.Config: every field documented, and every field reaching every
binding's configuration surface (TRL's gac_* fields, verl's Hydra ``gac``
section, ms-swift's --gac_* options, Trinity's ``gac`` dict in
tests/test_trinity.py), so that a new setting cannot be forgotten in one of
them. The ms-swift check runs in .venv-swift (./dev test-swift)."""

from __future__ import annotations

import dataclasses

import pytest

from gaccore import Config

# One valid value per field, different from its default. A new Config field
# fails test_every_field_has_a_non_default_value until it is added here.
NON_DEFAULT = {
    "ema_beta": 0.95,
    "stat_beta": 0.8,
    "cap": 0.02,
    "blend": 0.25,
    "mu_init": 0.7,
    "mu_min": 0.1,
    "mu_max": 0.95,
    "update_every": 2,
    "trim": 0.2,
    "sft_coef": "nll",
    "scale": (1.0, 2.0, 0.5),
    "per_mean": True,
    "warmup_steps": 10,
    "decay_steps": 20,
    "mu_peak": 0.8,
    "mu_valley": 0.2,
    "rho_init": 0.6,
    "rho_min": 0.2,
    "rho_max": 0.9,
    "kl_target": 0.05,
    "kl_band": 0.3,
    "kl_beta": 0.8,
    "eta_up": 0.05,
    "eta_down": 0.04,
    "large_shift": 0.05,
    "mode": "verified",
    "filter_demos": 0.5,
    "verified_patience": 5,
    "prior_from": "success",
    "success_target": 0.3,
    "success_threshold": 0.5,
}


def test_every_field_has_a_non_default_value() -> None:
    names = [f.name for f in dataclasses.fields(Config)]
    assert sorted(NON_DEFAULT) == sorted(names)
    defaults = Config()
    for name, value in NON_DEFAULT.items():
        assert value != getattr(defaults, name), name
        assert getattr(Config(**{name: value}), name) == value


def test_every_field_says_what_it_does() -> None:
    for setting in dataclasses.fields(Config):
        text = setting.metadata.get("help", "")
        assert text and "\n" not in text and len(text) <= 110, setting.name


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_every_field_reaches_trl(name: str, tmp_path) -> None:
    pytest.importorskip("trl")
    from trl import TrlParser

    from gaccore.bindings.trl import GACGRPOConfig

    value = NON_DEFAULT[name]
    words = [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
    argv = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", f"--gac_{name}", *words]
    (args,) = TrlParser((GACGRPOConfig,)).parse_args_and_config(argv)
    assert getattr(args.gac_config(), name) == value


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_every_field_reaches_verl(name: str) -> None:
    pytest.importorskip("verl")
    pytest.importorskip("transfer_queue")
    from omegaconf import OmegaConf

    from gaccore.bindings.verl_v1 import controller_from_config

    value = NON_DEFAULT[name]
    override = f"+gac.{name}=" + (f"[{','.join(map(str, value))}]" if isinstance(value, tuple) else str(value))
    # Hydra's "+gac.x=v" overrides arrive as this dotlist.
    config = OmegaConf.from_dotlist([override.removeprefix("+")])
    assert getattr(controller_from_config(config).config, name) == value


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_every_field_reaches_swift(name: str) -> None:
    pytest.importorskip("swift")
    from transformers import HfArgumentParser

    from gaccore.bindings.swift import GACRLHFArguments

    value = NON_DEFAULT[name]
    words = [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
    # ms-swift's parser over the arguments class, as `--gac_<name> ...` and a YAML file's keys reach it.
    # Into a namespace: building the arguments resolves a model and datasets (tests/test_swift.py does).
    namespace, rest = HfArgumentParser([GACRLHFArguments]).parse_known_args([f"--gac_{name}", *words])
    assert rest == []
    assert getattr(GACRLHFArguments.gac_config(namespace), name) == value
