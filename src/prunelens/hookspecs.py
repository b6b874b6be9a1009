"""Plugin hooks. Each receives a ``register`` callback (the simonw/llm style)."""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("prunelens")
hookimpl = HookimplMarker("prunelens")


@hookspec
def register_methods(register):
    """Register compression methods: ``register(MethodSubclass)``."""


@hookspec
def register_architectures(register):
    """Register model architectures: ``register(ArchitectureSpec(...))``."""


@hookspec
def register_tasks(register):
    """Register evaluation tasks: ``register(TaskSubclass)``."""


@hookspec
def register_rankers(register):
    """Register unit-ranking strategies: ``register(RankerSubclass)``."""


@hookspec
def register_allocators(register):
    """Register budget allocators: ``register(AllocatorSubclass)`` (see ``prunelens.allocation``)."""
