"""mimo-toolkit: train multimodal models with a different parallel layout per module.

The package splits into a light half and a heavy half:

* ``config``, ``layout``, ``recipe``, ``overrides``, ``resolve``, ``render``, ``launch``,
  ``schedulers``, ``cli`` and ``planner`` are pure Python. Listing, showing, rendering and dry-running a job
  never imports torch or megatron-core.
* ``runtime`` is what runs inside the job under torchrun: the MIMO model provider on
  megatron-core, the module bridge, the schedule, the training loop, data and checkpoints.
"""

__version__ = "0.1.0"
