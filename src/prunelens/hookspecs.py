"""Plugin hooks. Each receives a ``register`` callback (the simonw/llm style), typed below."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    from prunelens.compression.methods import Method
    from prunelens.evaluation.task_runner import Task
    from prunelens.model.adapters import ArchitectureSpec
    from prunelens.plan.allocation import Allocator
    from prunelens.plan.ranking import Ranker

hookspec = HookspecMarker("prunelens")
hookimpl = HookimplMarker("prunelens")


@hookspec
def register_methods(register: Callable[[type[Method]], None]) -> None:
    """Register compression methods: ``register(MethodSubclass)`` (checked: ``methods.method_problem``)."""


@hookspec
def register_architectures(register: Callable[[ArchitectureSpec], None]) -> None:
    """Register model architectures: ``register(ArchitectureSpec(...))``."""


@hookspec
def register_tasks(register: Callable[[type[Task]], None]) -> None:
    """Register evaluation tasks: ``register(TaskSubclass)``."""


@hookspec
def register_rankers(register: Callable[[type[Ranker]], None]) -> None:
    """Register unit-ranking strategies: ``register(RankerSubclass)``."""


@hookspec
def register_allocators(register: Callable[[type[Allocator]], None]) -> None:
    """Register budget allocators: ``register(AllocatorSubclass)`` (see ``prunelens.plan.allocation``)."""
