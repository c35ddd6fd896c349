"""What every trainer binding shares: the checkpoint file, the logged metrics,
the ``gac_*`` options of argument parsers.

A binding is wiring around ``gaccore.Controller``: it feeds the controller
the trainer's tensors, weights the two losses with ``bindings.losses.mix`` and
keeps the controller in the trainer's checkpoints. The last two parts are the
same for every trainer and live here, so TRL, verl and Trinity name the file
and the metrics alike and a checkpoint of one reads like the others.

The checkpoint file is JSON: ``{"controller": ctrl.state_dict(), ...}`` plus
whatever the binding needs to resume (TRL: the expert sampler's position).
Imports only the standard library and gaccore's core.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import field, fields
from functools import partial
from typing import Any, get_args, get_origin, get_type_hints

from gaccore import Config, Controller

__all__ = [
    "LOGGED_METRICS",
    "METRIC_PREFIX",
    "STATE_FILE",
    "config_from_knobs",
    "config_from_options",
    "gac_option_fields",
    "load_controller",
    "logged_metrics",
    "save_controller",
    "trainer_controller",
]

STATE_FILE = "gaccore_state.json"
METRIC_PREFIX = "gac/"
# Controller metrics worth a line in a trainer's logs, as "gac/<name>": the
# verifier's success rates smoothed (ema_*) and of the last step's batch (batch_*).
LOGGED_METRICS = (
    "mu",
    "prior",
    "rho",
    "estimate",
    "ema_disagreement",
    "ema_var_sft",
    "ema_var_rl",
    "ema_kl",
    "ema_expert_success",
    "batch_expert_success",
    "ema_policy_success",
    "batch_policy_success",
    "demos_kept",
    "n_nonfinite_rows",
)


def config_from_knobs(knobs: Mapping[str, Any], *, source: str) -> Config:
    """A ``Config`` from a trainer's configuration file or command line.

    ``knobs`` holds ``Config`` fields as YAML/Hydra give them (lists where
    ``Config`` holds tuples); ``source`` names where they came from in errors.
    """
    known = set(Config.__dataclass_fields__)
    unknown = sorted(str(key) for key in knobs if key not in known)
    if unknown:
        raise ValueError(f"{source} has unknown keys {unknown}; gaccore.Config fields are {sorted(known)}")
    fields = {str(key): tuple(value) if isinstance(value, list) else value for key, value in knobs.items()}
    return Config(**fields)


def gac_option_fields() -> list[tuple[str, Any, Any]]:
    """One ``gac_<name>`` field per ``gaccore.Config`` field, with its type,
    default and description, for ``dataclasses.make_dataclass``: a trainer's
    argument parser (TRL's, ms-swift's) then offers every new setting by
    itself. ``scale`` is a list here (those parsers read lists, not tuples)."""
    types = get_type_hints(Config)
    made = []
    for setting in fields(Config):
        kind, default = types[setting.name], setting.default
        help_text = f"{setting.metadata['help']} (gaccore.Config.{setting.name})"
        if get_origin(kind) is tuple:
            kind, spec = (
                list[get_args(kind)[0]],
                field(default_factory=partial(list, default), metadata={"help": help_text}),
            )
        else:
            spec = field(default=default, metadata={"help": help_text})
        made.append((f"gac_{setting.name}", kind, spec))
    return made


def config_from_options(options: Any) -> Config:
    """The controller's ``Config`` from an arguments object made with
    ``gac_option_fields()``."""
    return Config(**{setting.name: getattr(options, f"gac_{setting.name}") for setting in fields(Config)})


def trainer_controller(controller: object, config: Config | None, *, world_group: Any) -> Controller:
    """The controller a trainer binding steps: ``controller`` when given
    (checked), else a new one from ``config`` (None: the defaults).
    ``world_group`` is the trainer's process group when it trains on several
    processes, None on one: every rank must compute the same mu, so a
    controller without a group is refused there."""
    if controller is None:
        return Controller(config, process_group=world_group)
    if not isinstance(controller, Controller):
        raise TypeError(f"controller must be a gaccore.Controller, got {type(controller).__name__}")
    if world_group is not None and controller.process_group is None:
        raise ValueError(
            "controller: training runs on several processes, so the controller needs "
            "process_group=torch.distributed.group.WORLD (or your data-parallel group) "
            "for every rank to compute the same mu"
        )
    return controller


def logged_metrics(read: Mapping[str, float]) -> dict[str, float]:
    """The ``gac/*`` metrics of one read of the controller's state
    (``controller.metrics()``; NaN where a proxy is not yet defined, and for
    the ``batch_*`` values before the first step and after a step without
    statistics). A binding that also needs ``mu`` on the host takes it from
    the same read, ``read["mu"]``, never from these logged names."""
    return {f"{METRIC_PREFIX}{name}": read.get(name, math.nan) for name in LOGGED_METRICS}


def save_controller(controller: Controller, folder: str | os.PathLike[str], **extra: Any) -> str:
    """Write the controller's state (and the binding's JSON-ready ``extra``)
    as ``STATE_FILE`` into a checkpoint folder; returns the file's path.

    The write is atomic: the JSON goes to a temporary file in the same folder,
    is flushed and fsynced, and then replaces ``STATE_FILE`` in one rename, so
    a process killed mid-save leaves the previous state readable.
    """
    if "controller" in extra:
        raise ValueError("extra must not be named 'controller': that key holds the controller's state")
    text = json.dumps({"controller": controller.state_dict(), **extra})
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE_FILE)
    handle, temporary = tempfile.mkstemp(prefix=f".{STATE_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    _fsync_folder(folder)
    return path


def _fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_controller(controller: Controller, folder: str | os.PathLike[str], *, device: Any = None) -> dict[str, Any]:
    """Restore the controller from a checkpoint folder written by
    ``save_controller``; returns the binding's ``extra`` entries.

    A folder without the file raises FileNotFoundError: a controller that
    silently restarted would change ``mu`` mid-run. A state the controller
    refuses (another config or version) leaves it unchanged.
    """
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"checkpoint folder {os.fspath(folder)} has no {STATE_FILE}: it was saved without gaccore's "
            "save_controller, so the controller cannot continue where it stopped"
        )
    with open(path) as f:
        saved = json.load(f)
    if not isinstance(saved, dict) or "controller" not in saved:
        raise ValueError(f"{path} holds no 'controller' entry: it was not written by gaccore's save_controller")
    controller.load_state_dict(saved.pop("controller"), device=device)
    return saved
