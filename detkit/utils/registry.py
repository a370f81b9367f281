"""A registry of named builders, shared by backbones and models.

Built-in builders are registered with a decorator; third-party packages add builders without
touching detkit by declaring an entry point in the registry's group, e.g. in their setup.cfg::

    [options.entry_points]
    detkit.backbones =
        tiny_net = my_package.backbones:build_tiny_net

Entry points are discovered once, on the first lookup, and imported only when their builder is
asked for. An entry point cannot replace a registered name (it is ignored with a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Builders of `kind` ("backbone", "model") by name; each returns an instance of `returns`.

    Args:
        kind: what the builders build, used in error messages ("unknown backbone 'x'").
        returns: the class every built object must be an instance of (checked by `build`).
        entry_point_group: the importlib.metadata entry-point group holding plugins, or None.
    """

    def __init__(self, kind: str, returns: type[T], *, entry_point_group: str | None = None):
        self.kind = kind
        self.returns = returns
        self.entry_point_group = entry_point_group
        self._builders: dict[str, Callable[..., T]] = {}
        self._plugins: dict[str, EntryPoint] | None = None  # discovered lazily

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a builder under `name` (ValueError if taken, unless `overwrite`)."""

        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if not callable(builder):
                raise TypeError(f"{self.kind} builder for {name!r} must be callable, got {builder!r}")
            if name in self._builders and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return decorator

    def unregister(self, name: str) -> None:
        """Remove a registered builder (KeyError if absent); mostly for tests."""
        if name not in self._builders:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        del self._builders[name]

    def plugins(self, refresh: bool = False) -> dict[str, EntryPoint]:
        """Entry points of the group by name (not imported), discovered on the first call or on `refresh`."""
        if self._plugins is None or refresh:
            found: dict[str, EntryPoint] = {}
            group = self.entry_point_group
            for ep in entry_points(group=group) if group else ():
                if ep.name in self._builders:
                    warnings.warn(
                        f"entry point {ep.value!r} of group {group!r} reuses the registered "
                        f"{self.kind} name {ep.name!r}; it is ignored",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    continue
                found[ep.name] = ep
            self._plugins = found
        return self._plugins

    def names(self) -> list[str]:
        """Sorted names of all buildable entries (registered and entry-point plugins)."""
        return sorted(set(self._builders) | set(self.plugins()))

    def __contains__(self, name: object) -> bool:
        return name in self._builders or name in self.plugins()

    def get(self, name: str) -> Callable[..., T]:
        """The builder of `name`; a plugin is imported here. ValueError naming the available ones if unknown."""
        if name in self._builders:
            return self._builders[name]
        plugins = self.plugins()
        if name not in plugins:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        builder = plugins[name].load()
        if not callable(builder):
            raise TypeError(f"entry point {plugins[name].value!r} for {self.kind} {name!r} is not callable")
        return builder

    def build(self, name: str, **kwargs: Any) -> T:
        """`get(name)(**kwargs)`, checked to be an instance of `returns` (TypeError otherwise)."""
        built = self.get(name)(**kwargs)
        if not isinstance(built, self.returns):
            raise TypeError(
                f"builder of {self.kind} {name!r} returned {type(built).__name__}, not a {self.returns.__name__}"
            )
        return built
