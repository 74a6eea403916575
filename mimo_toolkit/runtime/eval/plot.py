"""Training and validation loss curves of a run, as ``RUN_DIR/curves.png``.

Read back from ``metrics.jsonl`` (so a resumed run plots every attempt's steps, the last
row of a step winning). matplotlib is imported here only, with the Agg backend: the CLI
and runs without plots never import it.
"""

from __future__ import annotations

from ...run_dir import RunDir

CURVES_FILE = "curves.png"


def plot_curves(run_dir: RunDir, title: str) -> str:
    """Write the plot; returns a line saying where (or why not)."""
    rows = {row["step"]: row for row in run_dir.read_metrics() if "loss" in row}
    if not rows:
        return "[mimo-toolkit] no metrics to plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "[mimo-toolkit] matplotlib is not installed: no loss curves (pip install matplotlib)"
    steps = sorted(rows)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [rows[s]["loss"] for s in steps], label="training loss", linewidth=1, alpha=0.8)
    valid = [s for s in steps if rows[s].get("valid_loss") is not None]
    if valid:
        ax.plot(valid, [rows[s]["valid_loss"] for s in valid], "o-", label="validation loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss per trained token (nats)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    path = run_dir.path / CURVES_FILE
    fig.savefig(path)
    plt.close(fig)
    return f"[mimo-toolkit] loss curves: {path}"
