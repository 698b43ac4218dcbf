"""Joining Ray for a job: a cluster when given an address (or RAY_ADDRESS),
else a fresh local instance on this machine.

Keep this module's imports light: every worker of a local Ray imports it to
run its setup hook, before any task. Under pipelines/training/ it pulled in
torch and Ray Train (about 10 CPU-seconds per worker, six workers for a
screening job on 2 CPUs).
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    """``ray.init`` once: ``address`` joins that cluster; None starts a local
    Ray with ``num_cpus`` CPUs (all by default). A no-op inside a Ray job or
    a process that already joined."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
        logger.info("joined Ray cluster at %s (%s CPUs)", address,
                    ray.cluster_resources().get("CPU"))
        return
    # address="local": never attach to another user's Ray on a shared host.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": quiet_train_cleaner_warnings})
    logger.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))


# Ray Train V2 starts a PlacementGroupCleaner actor that asks the State API
# whether the train controller is alive, to free its placement groups if it
# died. The State API lives in the dashboard, which a local instance here
# does without, so every poll warns "State API may be temporarily
# unavailable" into the job's console. Nothing leaks: a local Ray ends with
# the process that started it.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_train_cleaner_warnings() -> None:
    """Worker-process setup hook of a local Ray: errors only from the cleaner."""
    logging.getLogger(_CLEANER_LOGGER).setLevel(logging.ERROR)
