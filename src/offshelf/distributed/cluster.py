"""Starting or joining Ray, sizing the actor pool from the cluster's CPUs, and the actor-pool argument of the
installed Ray Data (`concurrency=N` from 2.9 to 2.50, `compute=ActorPoolStrategy(size=N)` otherwise)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from offshelf.errors import OffshelfError
from offshelf.models.runtime import available_cores

DECODE_TASK_CPUS = 0.25  # what one read-and-decode task asks of Ray
DECODE_SHARE = 0.25  # the part of each node's CPUs left to decode tasks when actors are sized automatically
MIN_DECODE_CPUS = 0.5
# map_batches took the actor pool as compute=ActorPoolStrategy(...) until 2.8, preferred concurrency=N from 2.9,
# and deprecated concurrency= for compute= again in 2.51
_CONCURRENCY_VERSIONS = ((2, 9), (2, 51))


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the body: the instance this process already joined, the cluster at `address`, or (without one)
    a new local instance with `num_cpus` CPUs (default: this machine's cores) that stops afterwards."""
    import ray

    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **options)
        else:  # "local": never a cluster found through RAY_ADDRESS or /tmp/ray
            ray.init(address="local", num_cpus=num_cpus or available_cores(), include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise OffshelfError(f"cannot start or join {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    _quiet_ray_data()
    try:
        with warnings.catch_warnings():  # Ray Data's advice on small inputs (fewer blocks than actors)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.data")
            yield
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    """offshelf shows its own progress bar; Ray Data's bars and per-run log lines would interleave with it."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def default_cpus_per_actor(actors: int) -> float:
    """CPUs each of `actors` actors asks for: the cluster's CPUs less a share per node for decoding, split over
    the actors, and never more than one node offers (an actor runs on one node)."""
    import ray

    nodes = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    if not nodes or max(nodes) <= 0:
        raise OffshelfError("the Ray cluster has no CPUs")
    reserve = [max(MIN_DECODE_CPUS, DECODE_SHARE * cpus) for cpus in nodes]
    usable = [cpus - r for cpus, r in zip(nodes, reserve) if cpus - r > 0]
    if not usable:
        raise OffshelfError("the Ray cluster's nodes have too few CPUs for an actor besides decoding")
    return min(max(usable), sum(usable) / actors)


def actor_pool(size: int) -> dict[str, Any]:
    """The `map_batches` argument that asks the installed Ray Data for a fixed pool of `size` actors."""
    import ray

    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    first, last = _CONCURRENCY_VERSIONS
    if first <= version < last:
        return {"concurrency": size}
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(size=size)}
