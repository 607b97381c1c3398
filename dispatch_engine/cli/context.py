"""What every command receives as click's `obj`."""

from __future__ import annotations

from dataclasses import dataclass

import pluggy

from ..config import Settings


@dataclass
class CommandContext:
    settings: Settings  # from the environment, before any server is resolved
    plugins: pluggy.PluginManager
