"""The federation's learning curve: test accuracy and loss per round, as a picture beside metrics.csv.

Leakage numbers only mean something next to the accuracy of the model they were measured on, so
every run shows whether its federation learned.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from federation.run_files import read_metrics  # noqa: E402


def read_curve(metrics_csv: Path) -> list[tuple[int, float, float]]:
    """(round, test accuracy, test loss) per finished round."""
    return [(row.round, row.test_accuracy, row.test_loss) for row in read_metrics(metrics_csv)]


def accuracy_figure(metrics_csv: Path, path: Path, title: str = "") -> None:
    curve = read_curve(metrics_csv)
    rounds = [r for r, _, _ in curve]
    fig, acc_ax = plt.subplots(figsize=(5.5, 3.2), dpi=110)
    acc_ax.plot(rounds, [a for _, a, _ in curve], "o-", color="tab:blue", label="test accuracy")
    acc_ax.set_ylim(0, 1.02)
    acc_ax.set_xlabel("FL round")
    acc_ax.set_ylabel("test accuracy", color="tab:blue")
    loss_ax = acc_ax.twinx()
    loss_ax.plot(rounds, [loss for _, _, loss in curve], "s--", color="tab:red", alpha=0.6, label="test loss")
    loss_ax.set_ylabel("test loss", color="tab:red")
    acc_ax.grid(alpha=0.3)
    acc_ax.set_title(title or "global model after each round", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def accuracy_line(metrics_csv: Path) -> str:
    """'0.750 0.850 ...': the test accuracy of every round, for the terminal."""
    return " ".join(f"{a:.3f}" for _, a, _ in read_curve(metrics_csv))
