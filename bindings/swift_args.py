"""``GACRLHFArguments``: ms-swift's ``RLHFArguments`` plus GAC's settings, and what GAC refuses.

Generated from ``gaccore.Config``: each of its fields ``<name>`` is the option
``--gac_<name>`` here, with the same type, default and description, so a new
setting reaches ms-swift's parser (the command line and a YAML/JSON config
file) by itself. ``python -m gaccore.bindings.swift rlhf`` parses with this
class (``swift_cli.py``).

Why an entry point and not a ``--external_plugins`` file: ms-swift parses its
arguments before it imports the plugins, so a plugin cannot add options; it
would have to read them from ``sys.argv`` behind ``--ignore_args_error true``,
which also lets every misspelt ms-swift option through. Subclassing the
arguments keeps ms-swift's own parser: typed ``--gac_*`` options, in
``--help`` and in the run's ``args.json``, and an unknown option still an error.

``check_settings`` refuses, naming the option, what the binding cannot serve
(CHORD's ``chord_mu_*`` schedule beside GAC, no ``chord_sft_dataset``, the
liger loss, ...); the arguments check it before ms-swift loads anything, the
trainer again for runs built in Python.
"""

from __future__ import annotations

from dataclasses import make_dataclass
from typing import Any

from swift.arguments import RLHFArguments

from gaccore import Config

from .common import config_from_options, gac_option_fields

__all__ = ["CHORD_SCHEDULE", "GACRLHFArguments", "check_settings"]

# The module GACRLHFArguments is exported from (its repr and saved arguments name it).
EXPORTED_FROM = "gaccore.bindings.swift"
# CHORD's mu schedule: GAC replaces it, so none of it may be given.
CHORD_SCHEDULE = ("chord_mu_warmup_steps", "chord_mu_decay_steps", "chord_mu_peak", "chord_mu_valley")


def check_settings(settings: Any, config: Config) -> None:
    """Refuse, with the option named, a run the binding cannot serve.

    ``settings``: ms-swift's arguments, or any object with the same attribute
    names (the trainer passes its training arguments and template's values);
    an attribute it lacks counts as not set."""

    def given(name: str) -> Any:
        return getattr(settings, name, None)

    if given("rlhf_type") not in (None, "grpo"):
        raise ValueError(f"rlhf_type: GAC mixes an SFT loss into GRPO's, so it needs grpo, got {given('rlhf_type')!r}")
    if not given("chord_sft_dataset"):
        raise ValueError(
            "chord_sft_dataset: GAC mixes an SFT loss on expert demonstrations into GRPO's, and ms-swift takes "
            "them from chord_sft_dataset (conversations ending in the expert's assistant turn): set it"
        )
    schedule = [name for name in CHORD_SCHEDULE if given(name) is not None]
    if schedule:
        raise ValueError(
            f"{schedule}: CHORD's mu schedule; with GAC mu comes from the controller (the gac_* options), "
            "so drop these options"
        )
    if given("chord_enable_phi_function") and config.sft_coef != "phi":
        raise ValueError(
            f"chord_enable_phi_function: GAC weights the SFT tokens by gac_sft_coef, here {config.sft_coef!r}, "
            "and the controller measures that same loss; drop chord_enable_phi_function, or use gac_sft_coef phi "
            "(CHORD's p(1-p), the default)"
        )
    if given("use_liger_kernel"):
        raise ValueError(
            "use_liger_kernel: ms-swift's liger GRPO loss computes no per-token log-probs for the controller's "
            "statistics; GAC runs on ms-swift's standard loss (drop use_liger_kernel)"
        )
    for name in ("padding_free", "packing"):
        if given(name):
            raise ValueError(
                f"{name}: GAC's statistics need each demonstration as a row of its own, and {name} packs them into "
                f"one; drop {name}"
            )
    if (given("sequence_parallel_size") or 1) > 1:
        raise ValueError(
            "sequence_parallel_size: GAC does not support sequence parallelism (it splits rows across ranks, and "
            "the controller reduces whole rows over all ranks); use sequence_parallel_size 1"
        )
    if given("streaming"):
        raise ValueError(
            "streaming: GAC draws demonstrations by index so that a resumed run draws what the stopped one "
            "would have; load chord_sft_dataset without streaming"
        )


def _post_init(self: Any) -> None:
    # GAC's settings first: a bad one fails before ms-swift resolves the model and the datasets.
    try:
        config = self.gac_config()
    except ValueError as error:
        raise ValueError(f"invalid gac_* option: {error}") from None
    check_settings(self, config)
    RLHFArguments.__post_init__(self)


GACRLHFArguments = make_dataclass(
    "GACRLHFArguments",
    gac_option_fields(),
    bases=(RLHFArguments,),
    namespace={
        "__post_init__": _post_init,
        "gac_config": config_from_options,
        "__module__": EXPORTED_FROM,
        "__doc__": "ms-swift's ``RLHFArguments`` plus every ``gaccore.Config`` field as a ``gac_<name>`` option "
        "(same type, default and description); ``gac_config()`` builds the controller's ``Config``.",
    },
)
