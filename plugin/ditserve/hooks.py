"""Hooks on a model's modules through diffusers' `HookRegistry`: named, and removable in any order.

Everything ditserve puts on a loaded model — caches, the engine's counters — is a diffusers `ModelHook`
registered by name in the module's `HookRegistry`, the mechanism diffusers' own caches use, so ours and
the library's chain on one mechanism and none of them replaces `forward` by hand. The first hook
registered on a module sits innermost (next to the module's own `forward`), each later one wraps the
chain so far.

Three things in diffusers 0.42's registry need care, and these functions take it:
- `HookRegistry.remove_hook` leaves the module's `forward` set on the instance after its last hook goes;
  `remove_hook` here deletes it, so the module is as loaded.
- `HookRegistry.remove_hook` relinks the chain through the next hook's `forward`; for a next hook with a
  `new_forward` (one that may skip the module: every cache) that field is the hook itself, which the
  relink overwrites — the hook stays registered but no longer runs. `remove_hook` here relinks such a
  hook through its `original_forward`, so hooks come off in any order.
- A registry caches the list of registries below it (`_get_child_registries`), which
  `diffusers.hooks.hooks._set_cache_context` walks to hand stateful hooks their cache context. A
  registry created below after that list was built is missing from it, and its hooks then fail with "No
  cache context is set". `add_hook` clears those lists on every registry under the root it is given
  when it creates a registry (a registry, once made, stays: removing hooks changes no list); code that
  registers hooks through a diffusers `apply_*` function calls `registries_changed` after it.
"""

from __future__ import annotations

from torch import nn


def add_hook(root: nn.Module, module: nn.Module, hook, name: str) -> None:
    """Register `hook` (a diffusers `ModelHook`) as `name` on `module`, a submodule of `root` (or `root`)."""
    from diffusers.hooks import HookRegistry

    if not hasattr(module, "_diffusers_hook"):  # a new registry: the registries above must find it
        HookRegistry.check_if_exists_or_initialize(module)
        registries_changed(root)
    module._diffusers_hook.register_hook(hook, name)


def remove_hook(root: nn.Module, name: str) -> None:
    """Remove every hook called `name` from `root` and its submodules, wherever it sits in a chain."""
    for module in root.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None or name not in registry.hooks:
            continue
        index = registry._hook_order.index(name)
        outer = registry._fn_refs[index + 1] if index + 1 < len(registry._fn_refs) else None
        skips_module = outer is not None and outer.original_forward is not None
        outer_forward = outer.forward if outer is not None else None
        registry.remove_hook(name, recurse=False)
        if skips_module:  # diffusers linked the inner chain into `forward`; it belongs in `original_forward`
            outer.original_forward, outer.forward = outer.forward, outer_forward
        if not registry.hooks and getattr(module.__dict__.get("forward"), "__func__", None) is type(module).forward:
            del module.forward  # the last hook is gone: the module runs its class's own `forward` again


def hook_names(root: nn.Module) -> dict[str, list[str]]:
    """Qualified module name → the names of the hooks registered on it, for every module that has any."""
    found = {}
    for qualified, module in root.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry._hook_order:
            found[qualified] = list(registry._hook_order)
    return found


def registries_changed(root: nn.Module) -> None:
    """Make every registry under `root` find the registries below it afresh (see the module docstring)."""
    for module in root.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            registry._child_registries_cache = None
