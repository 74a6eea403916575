"""Shared pytest setup.

Test modules that need the local Slurm cluster import the ``slurm_cluster`` fixture from
``slurm_support``; multi-process runtime tests use helpers from ``dist_support``.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

# Tests must never pick up a user's recipe path.
os.environ.pop("MIMO_TOOLKIT_RECIPE_PATH", None)
