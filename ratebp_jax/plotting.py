"""Figures of the notebook and the experiments (matplotlib; each returns its Figure).

    plot_neuron(currents)              spike raster and membrane potentials of LIF neurons
    plot_eligibility_vs_bptt(x, c)     eligibility against the BPTT derivative of the rate
    plot_cost(rows)                    step time and compiled memory against T, per method
    plot_grad_similarity(rows, table)  cosine to BPTT against T, and per layer
    plot_firing_rates(rates)           firing rate per layer and time step
    plot_energy(rows)                  operations and energy per layer, SNN against its ANN
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ratebp_jax import neuron as neuron_lib
from ratebp_jax import ratebp


def membrane_and_spikes(currents: jax.Array, neuron: neuron_lib.LIFParams | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(charged potentials u_t before reset, spikes s_t), both [T, ...] like currents [T, ...]."""
    neuron = neuron or neuron_lib.LIFParams()

    def step(v, x):
        u = neuron_lib.charge(v, x, neuron)
        v, s = neuron_lib.lif_step(v, x, neuron)
        return v, (u, s)

    _, (u, s) = jax.lax.scan(step, jnp.zeros_like(currents[0]), currents)
    return np.asarray(u), np.asarray(s)


def plot_neuron(currents: jax.Array, neuron: neuron_lib.LIFParams | None = None) -> plt.Figure:
    """Raster (top) and membrane potentials with the threshold (bottom) of neurons
    driven by currents [T, N] (N a few neurons)."""
    neuron = neuron or neuron_lib.LIFParams()
    u, s = membrane_and_spikes(currents, neuron)
    t = np.arange(1, len(u) + 1)
    fig, (ax_raster, ax_u) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    for i in range(u.shape[1]):
        ax_raster.scatter(t[s[:, i] > 0], np.full(int(s[:, i].sum()), i), marker="|", s=150)
        ax_u.plot(t, u[:, i], ".-", label=f"neuron {i}: mean input {float(np.mean(currents[:, i])):.2f}")
    ax_raster.set(ylabel="neuron", yticks=range(u.shape[1]), title="spikes")
    ax_u.axhline(neuron.threshold, color="k", ls="--", lw=1, label="threshold ϑ")
    ax_u.set(xlabel="time step t", ylabel="membrane u_t (before reset)")
    ax_u.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def eligibility_and_bptt_derivative(currents: jax.Array, shifts: jax.Array,
                                    neuron: neuron_lib.LIFParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For a neuron driven by currents [T] + c, for each shift c of shifts [S]:
    (eligibility from lif_rate_stats, d mean_t lif_scan(currents + c) / dc by jax.grad), both [S]."""
    neuron = neuron or neuron_lib.LIFParams()

    def rate(c):
        return jnp.mean(neuron_lib.lif_scan(currents + c, neuron))

    elig = jax.vmap(lambda c: ratebp.lif_rate_stats(currents + c, neuron)[1])(shifts)
    return np.asarray(elig), np.asarray(jax.vmap(jax.grad(rate))(shifts))


def plot_eligibility_vs_bptt(currents: jax.Array, shifts: jax.Array,
                             neuron: neuron_lib.LIFParams | None = None) -> plt.Figure:
    """Eligibility and the BPTT surrogate derivative of the firing rate against the input shift,
    with the rate itself: the two derivatives coincide (SPEC oracle 3)."""
    neuron = neuron or neuron_lib.LIFParams()
    elig, bptt = eligibility_and_bptt_derivative(currents, shifts, neuron)
    rates = jax.vmap(lambda c: jnp.mean(neuron_lib.lif_scan(currents + c, neuron)))(shifts)
    fig, (ax_rate, ax_grad) = plt.subplots(1, 2, figsize=(11, 4))
    ax_rate.step(shifts, rates, where="mid")
    ax_rate.set(xlabel="input shift c", ylabel="firing rate mean_t s_t", title="the rate is a staircase in c")
    ax_grad.plot(shifts, bptt, lw=4, alpha=0.4, label="BPTT: d rate / dc through lif_scan")
    ax_grad.plot(shifts, elig, "k--", lw=1.5, label="eligibility (lif_rate_stats, one forward scan)")
    ax_grad.set(xlabel="input shift c", ylabel="surrogate derivative", title="rate-based = BPTT, without the backward scan")
    ax_grad.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cost(rows: Sequence[dict], title: str = "") -> plt.Figure:
    """Step time and compiled temporaries against T, one line per method.

    rows: dicts with method, timesteps, step_time_s (None: not timed) and
    compiled_temp_bytes (analysis.cost_sweep's rows, or experiments.efficiency's CSV);
    a "forward" row is left out.
    """
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "forward"):
        own = sorted((r for r in rows if r["method"] == method), key=lambda r: int(r["timesteps"]))
        timed = [r for r in own if r["step_time_s"] not in (None, "")]
        ax_time.plot([int(r["timesteps"]) for r in timed], [float(r["step_time_s"]) for r in timed], "o-",
                     label=method)
        ax_mem.plot([int(r["timesteps"]) for r in own], [int(r["compiled_temp_bytes"]) / 2**20 for r in own], "o-",
                    label=method)
    for ax, label in ((ax_time, "step time (s, median)"), (ax_mem, "compiled temporaries (MiB)")):
        ax.set(xlabel="timesteps T", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_comparison(rows: Sequence[dict], title: str = "") -> plt.Figure:
    """Final test accuracy (mean ± std over seeds) against step time and against compiled memory.

    rows: experiments.compare's per-method rows (method, test_accuracy,
    test_accuracy_std, step_time_s, compiled_temp_bytes). Each method has its
    own colour and marker in both panels and in one legend (methods with
    nearly equal cost and accuracy overlap, so labels beside the points
    would too).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    markers = "osD^vP*Xph"
    for ax, field, scale, label in ((axes[0], "step_time_s", 1000, "step time (ms, median)"),
                                    (axes[1], "compiled_temp_bytes", 2**-20, "compiled temporaries (MiB)")):
        for i, r in enumerate(rows):
            ax.errorbar(float(r[field]) * scale, float(r["test_accuracy"]), yerr=float(r["test_accuracy_std"]),
                        fmt=markers[i % len(markers)], color=f"C{i % 10}", capsize=3, alpha=0.85, label=r["method"])
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="final test accuracy (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", title="method")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return fig


def plot_grad_similarity(rows: Sequence[dict], overall: Sequence[dict]) -> plt.Figure:
    """Left: overall cosine against T per method pair (mean over seeds, min-max bars);
    right: per-layer cosine in network order for the first pair, one line per T.

    rows: {"model", "pair", "timesteps", "layer", "cosine"} (experiments.grad_similarity's CSV);
    overall: {"pair", "timesteps", "mean", "min", "max"} per (pair, T).
    """
    fig, (ax_all, ax_layers) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    for pair in dict.fromkeys(r["pair"] for r in overall):
        own = [r for r in overall if r["pair"] == pair]
        ax_all.errorbar([r["timesteps"] for r in own], [r["mean"] for r in own], fmt="o-", label=pair, capsize=3,
                        yerr=[[r["mean"] - r["min"] for r in own], [r["max"] - r["mean"] for r in own]])
    ax_all.set(xlabel="timesteps T", ylabel="cosine similarity (all conv/linear weights)", ylim=(0, 1.02))
    first_pair = rows[0]["pair"]
    for t in dict.fromkeys(r["timesteps"] for r in rows):
        layers = {}
        for r in rows:
            if r["pair"] == first_pair and r["timesteps"] == t and r["layer"] != "overall":
                layers.setdefault(r["layer"], []).append(r["cosine"])
        ax_layers.plot([float(np.mean(v)) for v in layers.values()], "o-", ms=3, label=f"T={t}")
    ax_layers.set(xlabel="layer (network order, input → classifier)", ylabel=f"cosine ({first_pair})",
                  ylim=(0, 1.02))
    for ax in (ax_all, ax_layers):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{rows[0]['model']}: gradient similarity to BPTT")
    fig.tight_layout()
    return fig


def plot_firing_rates(rates: dict[str, np.ndarray], title: str = "") -> plt.Figure:
    """Heat map of {layer: rate per step [T]} (layers × steps) and each layer's mean over T."""
    grid = np.stack(list(rates.values()))  # [layers, T]
    fig, (ax_map, ax_mean) = plt.subplots(1, 2, figsize=(12, max(3, 0.25 * len(rates) + 1.5)))
    image = ax_map.imshow(grid, aspect="auto", cmap="viridis")
    ax_map.set(xlabel="time step t", ylabel="LIF layer", xticks=range(grid.shape[1]),
               xticklabels=range(1, grid.shape[1] + 1), yticks=range(len(rates)), yticklabels=list(rates))
    fig.colorbar(image, ax=ax_map, label="firing rate")
    ax_mean.barh(range(len(rates)), grid.mean(axis=1))
    ax_mean.set(yticks=range(len(rates)), yticklabels=list(rates), xlabel="mean firing rate over T")
    ax_mean.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_energy(rows: Sequence[dict], title: str = "") -> plt.Figure:
    """Per layer (network order, top to bottom): operations per image (the SNN's ACs and MACs, the
    ANN's MACs; log scale) and energy per image, SNN against ANN, with the totals in the legend.

    rows: analysis.operation_counts's rows (layer, acs, macs, ann_macs, energy_pj, ann_energy_pj).
    """
    layers = [r["layer"] for r in rows]
    y = np.arange(len(rows))
    fig, (ax_ops, ax_energy) = plt.subplots(1, 2, figsize=(12, max(3, 0.35 * len(rows) + 1.5)), sharey=True)
    for offset, key, label in ((-0.27, "acs", "SNN ACs"), (0, "macs", "SNN MACs"), (0.27, "ann_macs", "ANN MACs")):
        ax_ops.barh(y + offset, [float(r[key]) for r in rows], height=0.27,
                    label=f"{label} (total {sum(float(r[key]) for r in rows) / 1e6:.3g} M)")
    ax_ops.set(xscale="log", xlabel="operations per image", yticks=y, yticklabels=layers)
    for offset, key, label in ((-0.2, "energy_pj", "SNN"), (0.2, "ann_energy_pj", "ANN")):
        energy = [float(r[key]) / 1e6 for r in rows]
        ax_energy.barh(y + offset, energy, height=0.4, label=f"{label} (total {sum(energy):.3g} µJ)")
    ax_energy.set(xlabel="energy per image (µJ)")
    for ax in (ax_ops, ax_energy):
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8)
    ax_ops.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str) -> None:
    """Writes fig as an image (format from the extension) and closes it."""
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["membrane_and_spikes", "plot_neuron", "eligibility_and_bptt_derivative", "plot_eligibility_vs_bptt",
           "plot_cost", "plot_comparison", "plot_grad_similarity", "plot_firing_rates", "plot_energy", "save"]
