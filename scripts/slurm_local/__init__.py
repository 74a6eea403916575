"""A real two-node Slurm cluster on this one machine (``scripts/slurm_cluster.py`` is its
command line), split by concern: ``settings`` (names, ports, timings), ``paths``
(:class:`ClusterPaths`), ``conf`` (slurm.conf/slurmdbd.conf text), ``processes`` (pid files,
daemons, commands), ``starters`` (each daemon), ``lifecycle`` (up/down/status), ``install``
(apt). Standard library only."""
