"""torch.distributed process groups: released by `destroy_process_group`, never by dropping them.

torch keeps every group `init_process_group` or `new_group` made in its own registry
(`torch.distributed.distributed_c10d._world` and the maps beside it), so `del self.tp_group`
frees nothing: the group, its backend's threads and sockets and, with NCCL, its communicator
and the device buffers that holds, live until `torch.distributed.destroy_process_group(group)`
shuts the backend down and takes the group out of the registry. That call is the release;
clearing torch's registry by hand would skip the shutdown and break every other group.
`destroy_process_group()` with no argument destroys the default group and every other one,
so it is only suggested for the default group itself (which the runner then created).
"""

from __future__ import annotations

from leakcheck.engine.release import Release
from leakcheck.engine.safe_read import is_subtype
from leakcheck.recognisers import Recogniser, Remedy, library_class, shutdown_expression

C10D = "torch.distributed.distributed_c10d"
DESTROY = "torch.distributed.destroy_process_group"
REGISTRY = f"{C10D}._world"


def is_process_group(obj: object) -> bool:
    """A torch.distributed ProcessGroup (the class looked up only if torch.distributed is loaded)."""
    group_class = library_class(C10D, "ProcessGroup")
    return group_class is not None and is_subtype(type(obj), group_class)


def _is_default_group(group: object) -> bool:
    from leakcheck.engine.torch_internals import process_group_facts

    return process_group_facts(group).default


def _destroy(group: object) -> None:
    import torch.distributed as dist

    dist.destroy_process_group(group)  # type: ignore[arg-type]


def _destroy_default(group: object) -> None:
    """The default group goes with every other group: `destroy_process_group()`. Taking the
    group (weakly, through Release.call) makes the step a no-op once it is gone."""
    import torch.distributed as dist

    dist.destroy_process_group()


class ProcessGroups(Recogniser):
    name = "torch.distributed process groups"

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        if not is_process_group(obj):
            return None
        default = _is_default_group(obj)
        named = not path.startswith("<")
        if default:
            fix = f"{DESTROY}()"
        elif named:
            fix = f"{DESTROY}({shutdown_expression(path)})"
        else:
            fix = f"{DESTROY}(group)  # keep the group new_group() returned and destroy it in shutdown()"
        return Remedy(
            label=path,
            fix=fix,
            release=Release.call(_destroy_default if default else _destroy, obj),
            detail=f"torch's registry ({REGISTRY}) keeps it until {DESTROY}: a path to it, never a thing to clear",
            recogniser=self.name,
        )


RECOGNISER = ProcessGroups()
