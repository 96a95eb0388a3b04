"""What one kind of job asks of a SLURM cluster: the one value the preflight
(meldflow.slurm.preflight) and the site's limits (meldflow.slurm.site_limits) compare."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ask:
    """What one kind of job asks of the cluster, and where each value is set."""

    who: str  # "rule transcribe", "training text/seed-0"
    where: str  # the setting to change: "cluster/slurm/config.yaml", "train.slurm"
    partition: str | None = None
    account: str | None = None
    minutes: float | None = None
    gpus_per_node: int | None = None
    mem_mb: float | None = None
    cpus_per_node: int | None = None
    qos: str | None = None
    nodes: int = 1
    elsewhere: tuple[tuple[str, str], ...] = ()  # (field, where) for values set elsewhere

    def where_of(self, name: str) -> str:
        """Where this ask's value of field ``name`` is set."""
        return dict(self.elsewhere).get(name, self.where)
