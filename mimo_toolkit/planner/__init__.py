"""Layout planner (pure Python)."""
