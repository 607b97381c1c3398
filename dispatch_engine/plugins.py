"""Build the plugin manager (never at import) and describe what it loaded.

Hooks are called through `hooks.Hooks`, built once per app from this manager.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

import pluggy

from . import hookspecs
from .config import Settings, SettingsError
from .hooks import PROJECT, call_impl
from .hooks import PluginError as PluginError  # defined beside the hook calls; still here
from .setting import read_settings


@dataclass(frozen=True)
class LoadedPlugin:
    name: str
    source: str  # "entry point (<distribution>)", "plugins dir", "built-in", "registered"
    location: str
    hooks: tuple[str, ...]
    registers: dict[str, list[str]] = field(default_factory=dict)  # kind -> names offered


# What `dispatch-engine plugins` reports each plugin registered, by the hook that does it.
REGISTRATIONS = {
    "transports": "register_transports",
    "pacing_policies": "register_pacing_policies",
    "auth_providers": "register_auth_providers",
}


# The plugins that ship with the package, by module (registered in this order, as the
# plugins folder's were: by name); each one's name is its module's last part.
DEFAULT_PLUGINS = (
    "dispatch_engine.builtins.business_hours",
    "dispatch_engine.builtins.capture",
    "dispatch_engine.builtins.dev_login",
    "dispatch_engine.builtins.google_oidc",
    "dispatch_engine.builtins.imap_feedback",
    "dispatch_engine.builtins.notify",
    "dispatch_engine.builtins.pacing",
    "dispatch_engine.builtins.provider_webhooks",
    "dispatch_engine.builtins.smtp",
    "dispatch_engine.builtins.webhook",
)
USER_PACKAGE = "dispatch_engine_user"  # the made-up package of --plugins-dir files


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


def _plugin_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")}


def _user_module(path: Path) -> ModuleType:
    """Import a plugin file once; another file of the same name (another folder) is its own."""
    name = f"{USER_PACKAGE}.{path.stem}"
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) != str(path):
        module = _load_module_from(path, name)
    return module


def builtin_names() -> dict[str, str]:
    """Each built-in plugin's name and module."""
    return {module.rpartition(".")[2]: module for module in DEFAULT_PLUGINS}


def _block_filtered(pm: pluggy.PluginManager, settings: Settings, names: set[str]) -> None:
    """DISPATCH_PLUGINS: block what is left out, before anything is imported."""
    unknown = sorted(set(settings.plugins_allow or settings.plugins_deny) - names)
    if unknown:
        raise SettingsError(
            f"DISPATCH_PLUGINS names {', '.join(unknown)}, but no plugin has that name "
            f"(installed: {', '.join(sorted(names))})"
        )
    for name in names:
        allowed = settings.plugins_allow is None or name in settings.plugins_allow
        if name in settings.plugins_deny or not allowed:
            pm.set_blocked(name)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _register(pm: pluggy.PluginManager, plugin: object, name: str, source: str) -> None:
    if pm.has_plugin(name):
        raise PluginError(f"two plugins are named {name!r} (the second from the {source})")
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r}: {_one_line(exc)}") from None


def get_plugin_manager(settings: Settings, *, entry_points: bool = True) -> pluggy.PluginManager:
    """Entry points, then the plugins folder, then the built-in plugins (which others override).

    DISPATCH_PLUGINS leaves plugins out by name before they are imported. A hook no spec
    knows (a misspelling) or an argument its spec lacks fails here, naming the plugin; so
    does a malformed value of a plugin's own settings (`SETTINGS`, read from
    `settings.environ`), naming the variable.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    group = importlib.metadata.entry_points(group=PROJECT) if entry_points else ()
    eps = sorted({ep.name for ep in group})
    user = _plugin_files(settings.plugins_dir.resolve()) if settings.plugins_dir else {}
    builtin = builtin_names()
    _block_filtered(pm, settings, {*eps, *user, *builtin})
    for name in eps:
        try:
            pm.load_setuptools_entrypoints(PROJECT, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} (entry point): {_one_line(exc)}") from None
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r} (entry point) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    for name, path in user.items():
        if not pm.is_blocked(name):
            _register(pm, _user_module(path), name, "plugins dir")
    for name, module in builtin.items():
        if not pm.is_blocked(name) and not pm.has_plugin(name):  # same name: overridden
            _register(pm, importlib.import_module(module), name, "built-ins")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin)!r}: {_one_line(exc)}") from None
    for name, plugin in pm.list_name_plugin():
        if plugin is not None and (declared := plugin_settings(name, plugin)) is not None:
            read_settings(declared, settings.environ)  # a bad value stops the start, named
    return pm


def shipped_settings() -> list[type]:
    """The core's `Settings` and each built-in plugin's `SETTINGS`: every documented variable."""
    from .consent.verp import VerpSettings  # the worker's return paths, beside the core's

    found: list[type] = [Settings, VerpSettings]
    for name, module in builtin_names().items():
        declared = plugin_settings(name, importlib.import_module(module))
        if declared is not None:
            found.append(declared)
    return found


def plugin_settings(name: str, plugin: object) -> type | None:
    """The dataclass of `setting(...)` fields a plugin declares as `SETTINGS`, if any."""
    declared = getattr(plugin, "SETTINGS", None)
    if declared is None:
        return None
    if not (isinstance(declared, type) and dataclasses.is_dataclass(declared)):
        raise PluginError(f"plugin {name!r}: SETTINGS must be a dataclass of setting() fields")
    return declared


def disabled_plugins(pm: pluggy.PluginManager) -> list[str]:
    """The plugins DISPATCH_PLUGINS left out."""
    return sorted(name for name, plugin in pm.list_name_plugin() if plugin is None)


def describe_plugins(pm: pluggy.PluginManager) -> list[LoadedPlugin]:
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if name is None or plugin is None:
            continue
        location = getattr(plugin, "__file__", None) or repr(plugin)
        if id(plugin) in dists:
            source = f"entry point ({dists[id(plugin)].project_name})"
        elif getattr(plugin, "__name__", "") in DEFAULT_PLUGINS:
            source = "built-in"
        elif getattr(plugin, "__name__", "").startswith(f"{USER_PACKAGE}."):
            source = "plugins dir"
        else:
            source = "registered"
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or []))
        out.append(LoadedPlugin(name, source, str(location), hooks))
    return out


async def plugin_report(pm: pluggy.PluginManager, settings: Settings) -> list[LoadedPlugin]:
    """`describe_plugins`, with the names each plugin's `register_*` hooks return."""
    out = []
    for plugin in describe_plugins(pm):
        registers: dict[str, list[str]] = {}
        for kind, hook_name in REGISTRATIONS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name == plugin.name:
                    specs = await call_impl(impl, hook_name, {"settings": settings})
                    registers[kind] = [spec.name for spec in specs or []]
        out.append(replace(plugin, registers=registers))
    return out
