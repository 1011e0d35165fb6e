"""The soak's plot: tm cells and shm left after each drain, with the fits."""

from __future__ import annotations

from pathlib import Path


def render_plot(result, path) -> Path:
    """Calls on x; top: tm cells left after each drain (+ fit; cells in flight on the right
    axis), bottom: shm and tm's shm growth since the baseline after each drain (+ fit)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), dpi=100, sharex=True)
    s, cp = result.samples, result.checkpoints
    base = cp[0]
    colour = "#c0392b" if result.leaked else "#1e8449"
    xs = [x["calls"] for x in cp]
    xmax = max(xs + [1])
    inflight = ax1.twinx()
    inflight.plot([x["calls"] for x in s], [x["current"] for x in s], ".", ms=3, color="#bbbbbb")
    inflight.set_ylabel("tm cells during the run", color="#999999", fontsize=8)
    inflight.tick_params(axis="y", labelcolor="#999999", labelsize=8)
    ax1.set_zorder(inflight.get_zorder() + 1)
    ax1.patch.set_visible(False)
    ax1.plot(xs, [x["current"] - base["current"] for x in cp], "o", color=colour,
             label="tm cells left after each drain")
    fit = result.cells_per_call
    if fit:
        ax1.plot([0, xmax], [fit["intercept"] - base["current"],
                             fit["intercept"] - base["current"] + fit["slope"] * xmax], "-",
                 color=colour, lw=1, label=f"fit: {fit['slope']:.3g} cells/call")
    ax1.plot(xs, [x.get("hits", 0) for x in cp], "x", color="#555555",
             label="4140 calls that hit the dead connection")
    ax1.set_ylabel("tm cells left")
    ax1.set_ylim(bottom=-0.5, top=max([x["current"] - base["current"] for x in cp] +
                                      [x.get("hits", 0) for x in cp] + [1]) * 1.3 + 0.5)
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)
    kib = 1024.0
    key = result.shm_measure
    what = "shm real_used less WebSocket buffers" if key == "shm_other" else "shm real_used"
    ax2.plot(xs, [(x[key] - base[key]) / kib for x in cp], "o", color="#2e86c1", label=what)
    fs = result.shm_per_call
    if fs:
        y0 = (fs["intercept"] - base[key]) / kib
        ax2.plot([0, xmax], [y0, y0 + fs["slope"] * xmax / kib], "-", color="#2e86c1", lw=1,
                 label=f"fit: {fs['slope']:.3g} B/call")
    if all("tm_shm" in x for x in cp):
        ax2.plot(xs, [(x["tm_shm"] - base["tm_shm"]) / kib for x in cp], "s", color="#8e44ad",
                 ms=5, label="tm's shm (mod.mem_stats tm shm)")
        ft = result.tm_shm_per_call
        if ft:
            y0 = (ft["intercept"] - base["tm_shm"]) / kib
            ax2.plot([0, xmax], [y0, y0 + ft["slope"] * xmax / kib], "--", color="#8e44ad", lw=1,
                     label=f"fit: {ft['slope']:.3g} B/call")
    ax2.axhline(0, color="#888888", lw=0.5)
    ax2.set_ylabel("shm growth after drain (KiB)")
    ax2.set_xlabel("calls completed")
    ax2.legend(loc="upper left", fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"kamleak soak: {result.kamailio} {result.variant} {result.transport.upper()}, "
                 f"{result.calls} calls, mix {result.mix:g}: {result.leaked_cells} cell(s) left, "
                 f"{result.hits}/{result.calls_4140} 4140 calls hit", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
