"""The paper's Fig. 3: mAP_s@K against K, one panel per query group and threshold."""

from __future__ import annotations

from pathlib import Path

from soundsearch.evaluate.report import GROUP_TITLES, EvalReport


def plot_report(report: EvalReport, path: Path) -> Path:
    """mAP vs K, one panel per query group x threshold, one line per system (Fig. 3 layout)."""
    from soundsearch.errors import SoundsearchError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SoundsearchError(
            "--plot needs matplotlib, which is not installed: pip install 'soundsearch[plot]'"
        ) from None
    groups = [g for g in ("single", "multi") if len(report.groups[g])] or report.nonempty_groups()
    rows, cols = len(groups), len(report.thresholds)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharex=True)
    styles = ["o-", "s-", "^-", "D-", "v-", "P-", "X-", "*-", "h-", "<-", ">-"]
    # K values evenly spaced, as in the paper's figure: 1, 5, 10 stay readable next to 100.
    xs = list(range(len(report.ks)))
    for r, g in enumerate(groups):
        for c, s in enumerate(report.thresholds):
            ax = axes[r][c]
            for i, sysres in enumerate(report.systems):
                y = report.map(sysres, g, s)
                if sysres.kind == "random":
                    ax.plot(xs, y, "k--", label=sysres.name, linewidth=1.2)
                else:
                    ax.plot(xs, y, styles[i % len(styles)], label=sysres.name, markersize=4, linewidth=1.4)
            ax.set_title(f"{GROUP_TITLES[g]} ({len(report.groups[g])}), s = {s}", fontsize=10)
            ax.set_xticks(xs, [str(k) for k in report.ks])
            ax.set_ylim(-0.02, 1.03)  # lines at exactly 0 or 1 stay visible
            ax.grid(alpha=0.3)
            if r == rows - 1:
                ax.set_xlabel("K")
            if c == 0:
                ax.set_ylabel(f"mAP$_s$@K")
    handles, labels = axes[0][0].get_legend_handles_labels()
    name = report.dataset.get("name", "")
    fig.suptitle(f"mAP$_s$@K on {name}: database of {report.database_size} recordings", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    # Below the panels, outside the axes; bbox_inches="tight" grows the figure to hold it.
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2 if cols < 3 else 3,
               fontsize=8, frameon=False)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as exc:
        raise SoundsearchError(f"cannot write the plot to {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path
