"""A real single-node Slurm (slurmctld, slurmd and a private munged) for the Slurm tests.

Where the daemons cannot run here, the fixture still yields the private configuration, with
``running`` False and the reason: the tests then say so and check the scripts with Slurm's
own parser (``sbatch``) instead. They are never skipped.
"""

from __future__ import annotations

import pytest

from tests.services import ServiceError, Slurm


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = Slurm()
    try:
        cluster.start()
        cluster.running, cluster.why_not = True, ""
    except ServiceError as exc:
        cluster.stop() if hasattr(cluster, "base") else None
        cluster = Slurm().write_config()
        cluster.running, cluster.why_not = False, str(exc)
    yield cluster
    cluster.stop()
