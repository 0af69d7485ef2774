"""Where work runs: one interface that maps a picklable function over picklable items, results in order.

    with executor_for(ray=None, workers=4) as executor:         # local: inline for 1 worker, else processes
        results = executor.map(score, items, shared=inputs, labels=names)
    with executor_for(ray="auto", workers=None) as executor:    # a Ray cluster: tasks, inputs sent once
        ...

``fn(shared, item)`` runs once per item; ``shared`` (the model, the data: what every item needs) is sent to each
worker once, not once per item, where the executor can (Ray's object store).
"""

from edgefold.exporter.distributed.cluster import RAY_EXTRA_HINT, RayExecutor, local_head
from edgefold.exporter.distributed.executor import Executor, executor_for
from edgefold.exporter.distributed.folders import Folder
from edgefold.exporter.distributed.local import LocalExecutor, threads_per_worker

__all__ = ["RAY_EXTRA_HINT", "Executor", "Folder", "LocalExecutor", "RayExecutor", "executor_for", "local_head",
           "threads_per_worker"]
