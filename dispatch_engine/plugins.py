"""Build the plugin manager (never at import) and call hooks, awaiting async implementations."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .config import Settings
from .resources import resource_dir

log = logging.getLogger(__name__)
PROJECT = "dispatch_engine"


class PluginError(RuntimeError):
    """A plugin could not be loaded or broke a contract; the message names it."""


@dataclass(frozen=True)
class LoadedPlugin:
    name: str
    source: str  # "entry point", "plugins dir", "built-in"
    location: str
    hooks: tuple[str, ...]


def _load_module_from(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"plugin {path.name} failed to import: {exc}") from exc
    return module


def _modules_in(folder: Path, package: str) -> Iterable[tuple[str, ModuleType]]:
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"{package}.{path.stem}"
        module = sys.modules.get(name) or _load_module_from(path, name)
        yield path.stem, module


def builtin_plugins() -> list[tuple[str, ModuleType]]:
    return list(_modules_in(resource_dir("plugins"), "dispatch_engine_plugins"))


def get_plugin_manager(settings: Settings, *, entry_points: bool = True) -> pluggy.PluginManager:
    """Entry points, then the plugins folder, then the built-in plugins (which others override)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if entry_points:
        pm.load_setuptools_entrypoints(PROJECT)
    if settings.plugins_dir is not None:
        for name, module in _modules_in(settings.plugins_dir.resolve(), "dispatch_engine_user"):
            pm.register(module, name=name)
    for name, module in builtin_plugins():
        if pm.get_plugin(name) is None:
            pm.register(module, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from None
    return pm


def describe_plugins(pm: pluggy.PluginManager) -> list[LoadedPlugin]:
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if name is None or plugin is None:
            continue
        location = getattr(plugin, "__file__", None) or repr(plugin)
        if id(plugin) in dists:
            source = f"entry point ({dists[id(plugin)].project_name})"
        elif getattr(plugin, "__name__", "").startswith("dispatch_engine_plugins."):
            source = "built-in"
        else:
            source = "plugins dir"
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or []))
        out.append(LoadedPlugin(name, source, str(location), hooks))
    return out


async def call_all(hook: Any, **kwargs: Any) -> list[Any]:
    """Call every implementation in pluggy's order, awaiting coroutines (pluggy is sync).

    An exception stops the caller, wrapped in a PluginError that names the plugin.
    """
    results = []
    for impl in reversed(hook.get_hookimpls()):
        try:
            result = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in {hook.name}: {type(exc).__name__}: {exc}"
            ) from exc
        if result is not None:
            results.append(result)
    return results


async def notify(hook: Any, **kwargs: Any) -> None:
    """Fire an event hook; a plugin that raises is logged and never stops the caller."""
    for impl in hook.get_hookimpls():
        try:
            result = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("plugin %s raised in %s", impl.plugin_name, hook.name)
