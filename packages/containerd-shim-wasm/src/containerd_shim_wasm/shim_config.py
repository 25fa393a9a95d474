"""``Version`` and ``Config``: a shim binary's identity and process-level settings.

Kept apart from :mod:`containerd_shim_wasm.shim`, which the ``start``/``delete`` actions
import for every container: dataclasses cost ~15 ms to import, and these are only needed
for ``-v`` and by engines that pass a Config.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Version:
    """What ``-v`` prints: the engine shim's version and source revision."""

    version: str = "<none>"
    revision: str = "<none>"


@dataclass(frozen=True)
class Config:
    """Process-level settings of a shim binary.

    Attributes:
        no_setup_logger: leave logging alone (the embedding program configures it).
        default_log_level: the level when neither ``-debug`` nor ``SHIM_LOG_LEVEL`` say.
    """

    no_setup_logger: bool = False
    default_log_level: str = "info"
