"""Shared pytest setup.

The ``slurm_cluster`` fixture (a real local Slurm cluster, from ``slurm_support``) is
available to every test; multi-process runtime tests use helpers from ``dist_support``.
"""

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

# Tests must never pick up a user's recipe path, nor write to the user's job registry.
os.environ.pop("MIMO_TOOLKIT_RECIPE_PATH", None)
os.environ["MIMO_TOOLKIT_HOME"] = tempfile.mkdtemp(prefix="mimo-home-")

from slurm_support import slurm_cluster  # noqa: E402,F401  (the real local Slurm cluster fixture)
from dist_support import colocated, reference  # noqa: E402,F401  (reference runs shared by test modules)
