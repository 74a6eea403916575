"""Shared pytest setup.

Test modules that need the local Slurm cluster import the ``slurm_cluster`` fixture from
``slurm_support``; multi-process runtime tests use helpers from ``dist_support``.
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
