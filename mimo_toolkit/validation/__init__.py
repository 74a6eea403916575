"""Every rule a job must satisfy, checked before anything is written, submitted or started.

One torch-free rule set, used by ``show``, ``render``, ``submit`` (``--dry-run`` too) through
:func:`mimo_toolkit.resolve.validate`, by the planner for every layout it returns, and by the
job itself when it reads ``job.json``. A job that passes here must run: a rule the runtime
would enforce belongs here, not in the job, where it would fail after the scheduler
allocated the nodes.

The checks, in the order a job is resolved:

* :func:`check_config` (``job``): the config by itself: modules and freezing, every numeric
  value's range and every scheduler string's form (``values``), architectures, training,
  cluster, sequence and data source;
* :func:`check_model_fit` (``job``): every module's tp/cp/pp/ep against its architecture
  (before the layout is finalized, so it needs no data-parallel size), and
  :func:`check_runtime_support`: what the runtime can build (the provider calls it too);
* ``MimoParallelismConfig.finalize`` (``mimo_toolkit.layout``): the rank arithmetic;
* :func:`check_batch_fit` (``job``): the batch against the finalized data-parallel sizes;
* :func:`check_data_files` (``files``): the files the job reads, where the job runs;
* :func:`check_slurm_launch` (``job``): what a batch script needs (the Slurm backend calls it).

Every failure is a :class:`~mimo_toolkit.errors.UserError` whose one-line message names the
key and the accepted values.
"""

from .files import check_data_files
from .job import check_batch_fit, check_config, check_model_fit, check_runtime_support, check_slurm_launch
from .values import RANGES, Range, check_env_name

__all__ = ["RANGES", "Range", "check_batch_fit", "check_config", "check_data_files", "check_env_name", "check_model_fit",
           "check_runtime_support", "check_slurm_launch"]
