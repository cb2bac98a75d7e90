"""A user's own strategies: imported by ``package.module:NAME`` or from an installed package's entry point, and checked
at validation time so that they cannot fail after task 1."""

from __future__ import annotations

import importlib
import inspect
import pickle
from typing import Any

from cl_harness.config.schema import did_you_mean
from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import ConfigError, clip, raised_at

EXIT_HINT = "a plugin reports a problem by raising an exception; it must not end the process (sys.exit, os._exit)"


def process_exit(exc: BaseException) -> str:
    """What ended the process from a user's code (``sys.exit(2)``, or the exception's type), with the module and line it came from."""
    what = f"sys.exit({clip(repr(exc.code), 40)})" if isinstance(exc, SystemExit) else type(exc).__name__
    traceback = exc.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None:
        return what
    return f"{what} in module {clip(str(traceback.tb_frame.f_globals.get('__name__')), 80)!r} ({raised_at(exc)})"


ENTRY_POINT_GROUP = "cl_harness.strategies"  # installed packages register their StrategyInfo objects here
IMPORTABLE_HINT = ("install the package that holds it (pip install -e path/to/your/package) or add the folder that holds "
                   "the module to PYTHONPATH, then check with `python -c 'import {module}'`")


def import_object(reference: str) -> Any:
    """The object ``package.module:NAME`` names; a ConfigError that says what was looked for and how to make it importable."""
    module_name, _, attr = str(reference).partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"{clip(reference, 120)!r} is not an import path", hint="write it as package.module:NAME")
    looked_for = f"looked for {clip(attr, 60)!r} in module {clip(module_name, 80)!r}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"cannot import {clip(reference, 120)!r}: no module named {clip(exc.name, 80)!r} ({looked_for})",
                              hint=IMPORTABLE_HINT.format(module=clip(module_name, 80))) from None
        raise ConfigError(f"module {clip(module_name, 80)!r} was found, but it imports {clip(exc.name, 80)!r}, which is not "
                          f"installed ({looked_for})", hint=f"install {clip(exc.name, 80)!r} in this environment") from None
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything on import
        raise ConfigError(f"importing module {clip(module_name, 80)!r} failed ({looked_for}): {type(exc).__name__}: "
                          f"{clip(exc, 200)}") from None
    except BaseException as exc:  # sys.exit() on import, or another exit that is not Ctrl-C
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigError(f"user plugin module {clip(module_name, 120)!r} ended the process on import: {process_exit(exc)}",
                          hint=EXIT_HINT) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [name for name in dir(module) if not name.startswith("_")]
        where = getattr(module, "__file__", None) or module_name
        raise ConfigError(f"module {clip(module_name, 80)!r} ({clip(where, 120)}) has no {clip(attr, 60)!r}",
                          hint=did_you_mean(attr, names) or f"it defines: {clip(', '.join(names), 200)}") from None


def entry_point_origin(entry_point: Any) -> str:
    """Where an installed strategy comes from: ``package <dist> <version>``, or its import path when no distribution is known."""
    dist = getattr(entry_point, "dist", None)
    if dist is not None:
        return f"package {dist.name} {dist.version}"
    return f"entry point {entry_point.value}"


def installed_entry_points() -> list:
    """The entry points of the ``cl_harness.strategies`` group of every installed distribution (none is imported here)."""
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def check_user_plugin(plugin: Any, name: str, params: dict, source: Source, path: KeyPath) -> None:
    """``plugin`` must be an Avalanche plugin class that takes ``params``, and its instances must pickle.

    Checkpoints and worker processes pickle the strategy's plugins, so an unpicklable one would
    train its first task and then fail.
    """
    from avalanche.core import BasePlugin

    if not (inspect.isclass(plugin) and issubclass(plugin, BasePlugin)):
        kind = "a class" if inspect.isclass(plugin) else type(plugin).__name__
        raise source.error(
            path,
            f"{clip(name, 120)!r} names {kind} that is neither a cl_harness StrategyInfo nor an Avalanche plugin",
            hint="name a StrategyInfo (docs/extending.md) or a subclass of avalanche.core.SupervisedPlugin, as package.module:NAME",
        )
    try:
        inspect.signature(plugin).bind(**params)
    except TypeError as exc:
        raise source.error(path + (name,), f"user plugin {clip(name, 120)!r} does not take these parameters: {clip(exc, 160)}") from None
    except ValueError:  # no signature to inspect: instantiating below tells
        pass
    try:
        instance = plugin(**params)
    except Exception as exc:  # noqa: BLE001 - the user's constructor may raise anything
        raise source.error(path, f"user plugin {clip(name, 120)!r} cannot be built: {type(exc).__name__}: {clip(exc, 160)}") from None
    except BaseException as exc:  # sys.exit() or another exit that is not Ctrl-C
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise source.error(path, f"user plugin {clip(name, 120)!r} ended the process while it was built: {process_exit(exc)}",
                           hint=EXIT_HINT) from None
    try:
        pickle.dumps(instance)
    except BaseException as exc:  # noqa: BLE001 - pickling raises TypeError, PicklingError, AttributeError... (a __reduce__ may exit)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise source.error(
            path,
            f"user plugin {clip(name, 120)!r} cannot be pickled ({type(exc).__name__}: {clip(exc, 120)}); "
            "checkpoints and worker processes pickle every plugin",
            hint="keep only picklable state on the plugin (no open files, locks, lambdas or local classes)",
        ) from None
