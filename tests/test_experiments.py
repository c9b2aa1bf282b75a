"""The experiment commands end to end, on the digits model: CSV, PNG and printed tables."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *flags):
    proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits run of two steps (its best checkpoint is what the analyses load)."""
    workdir = tmp_path_factory.mktemp("digits_run")
    run("train", "--config", "configs/digits.py:smoke", "--workdir", str(workdir))
    return str(workdir)


class FakeSplit:
    """Three test batches of 2 examples, the last padded (mask 0) after its first; image = example index."""

    def epoch(self, epoch):
        for start in (0, 2, 4):
            yield {"image": np.arange(start, start + 2, dtype=np.float64)[:, None], "label": np.array([1, 2]),
                   "mask": np.array([1, 0 if start == 4 else 1])}


def test_first_test_batches_and_their_weighted_mean_count_real_examples_only():
    from experiments import common

    batches = list(common.first_test_batches(FakeSplit(), 5, "float32"))
    assert [images[:, 0].tolist() for images, _ in batches] == [[0, 1], [2, 3], [4]]
    assert batches[0][0].dtype == np.float32 and batches[2][1].tolist() == [1]
    means, examples = common.mean_over_test_batches(
        FakeSplit(), 2, "float32", lambda images: {"b": images.mean(), "a": np.array([images.max(), 1.0])})
    assert examples == 4 and list(means) == ["b", "a"]  # measure's order, not sorted
    np.testing.assert_allclose(means["b"], 1.5)
    np.testing.assert_allclose(means["a"], [2.0, 1.0])  # (1 · 2 + 3 · 2) / 4


@pytest.mark.slow  # compiles 3 methods × 2 T in a subprocess
def test_efficiency_writes_table_plot_and_summary(tmp_path):
    """--max_step_s 0: each method is timed at its first T only, its memory measured at every T."""
    stdout = run("efficiency", "--model", "digits_vgg", "--timesteps", "2,1", "--methods", "rate_m,rate_s,bptt_m",
                 "--repeats", "1", "--max_step_s", "0", "--out", str(tmp_path))
    rows = read(tmp_path / "efficiency.csv")
    assert list(rows[0]) == ["model", "method", "timesteps", "batch_size", "device", "step_time_s",
                             "compiled_temp_bytes", "argument_bytes", "output_bytes", "peak_bytes"]
    assert [(r["method"], r["timesteps"], r["step_time_s"] != "") for r in rows] == [
        ("forward", "1", True), ("rate_m", "1", True), ("rate_m", "2", False), ("rate_s", "1", True),
        ("rate_s", "2", False), ("bptt_m", "1", True), ("bptt_m", "2", False)]
    assert all(float(r["step_time_s"]) > 0 for r in rows if r["step_time_s"])
    memory = {(r["method"], r["timesteps"]): int(r["compiled_temp_bytes"]) for r in rows}
    assert memory[("bptt_m", "2")] > memory[("bptt_m", "1")] > memory[("forward", "1")] > 0
    assert (tmp_path / "efficiency.png").stat().st_size > 10_000
    with open(tmp_path / "efficiency_summary.json") as f:
        summary = json.load(f)
    assert set(summary) == {"time_ratio_T6", "memory_ratio_T6", "rate_s_memory_T8_T1", "rate_m_vs_cost_model",
                            "bptt_s_vs_bptt_m_time_max", "sltt_memory_T8_T2", "ottt_memory_T8_T2",
                            "sltt_k_vs_sltt_time_T6"}
    assert "| digits_vgg | rate_s  | 2         | 16         |" in stdout


def test_efficiency_summary_of_the_baselines():
    from experiments import efficiency

    def row(method, t, time, memory):
        return {"method": method, "timesteps": str(t), "step_time_s": time, "compiled_temp_bytes": memory}
    rows = [row("bptt_m", 1, 1.0, 10), row("bptt_s", 1, 1.2, 10), row("bptt_m", 2, 2.0, 20), row("bptt_s", 2, 3.0, 20),
            row("sltt", 2, 1.0, 50), row("sltt", 8, 4.0, 51), row("sltt", 6, 3.0, 51), row("sltt_k", 6, "", 52)]
    summary = efficiency.summarize(rows)
    assert summary["bptt_s_vs_bptt_m_time_max"] == 1.5 and summary["sltt_memory_T8_T2"] == 51 / 50
    assert summary["ottt_memory_T8_T2"] is None and summary["sltt_k_vs_sltt_time_T6"] is None  # untimed


@pytest.mark.slow  # fresh processes per measurement
def test_efficiency_isolated_measures_in_fresh_processes(tmp_path):
    """--isolate: every row comes from its own process; on the CPU there is no allocator peak."""
    run("efficiency", "--model", "digits_vgg", "--timesteps", "1", "--methods", "rate_m", "--repeats", "1",
        "--isolate", "--out", str(tmp_path))
    rows = read(tmp_path / "efficiency.csv")
    assert [(r["method"], r["timesteps"]) for r in rows] == [("forward", "1"), ("rate_m", "1")]
    assert all(float(r["step_time_s"]) > 0 and r["device"].startswith("cpu") and r["peak_bytes"] == ""
               for r in rows)


@pytest.mark.slow  # bptt and rate gradients at 2 T × 2 seeds
def test_grad_similarity_at_initialisation(tmp_path):
    stdout = run("grad_similarity", "--model", "digits_vgg", "--timesteps", "1,3", "--seeds", "0,1",
                 "--pairs", "rate_m:bptt_m", "--out", str(tmp_path))
    rows = read(tmp_path / "grad_similarity.csv")
    assert len(rows) == 2 * 2 * 5  # T × seeds × (overall + 4 layers)
    at_1 = [float(r["cosine"]) for r in rows if r["timesteps"] == "1"]
    np.testing.assert_allclose(at_1, 1.0, atol=1e-5)  # oracle 1, in float32
    assert [r["layer"] for r in rows[:5]] == ["overall", "conv0", "conv1", "conv2", "classifier"]
    assert (tmp_path / "grad_similarity.png").stat().st_size > 10_000
    assert "| rate_m:bptt_m | 3 " in stdout


@pytest.mark.slow  # trains first (the trained fixture)
@pytest.mark.xdist_group("trained")  # one worker trains it once
def test_grad_similarity_and_firing_rates_of_a_trained_run(trained, tmp_path):
    """--workdir alone: the config is the run's record (the smoke config's T = 2, not digits.py's T = 4)."""
    run("grad_similarity", "--workdir", trained, "--out", str(tmp_path))
    rows = read(tmp_path / "grad_similarity.csv")
    assert {r["seed"] for r in rows} == {"trained"} and {r["timesteps"] for r in rows} == {"2"}

    stdout = run("firing_rates", "--workdir", trained, "--out", str(tmp_path))
    rows = read(tmp_path / "firing_rates.csv")
    assert [r["layer"] for r in rows] == ["spike0"] * 3 + ["spike1"] * 3 + ["spike2"] * 3
    assert [r["timestep"] for r in rows[:3]] == ["1", "2", "mean"]
    rates = np.array([float(r["firing_rate"]) for r in rows]).reshape(3, 3)
    assert np.all((rates >= 0) & (rates <= 1)) and rates.max() > 0
    np.testing.assert_allclose(rates[:, 2], rates[:, :2].mean(axis=1), rtol=1e-6)
    assert (tmp_path / "firing_rates.png").stat().st_size > 10_000
    assert "spike2" in stdout


@pytest.mark.slow  # trains first (the trained fixture)
@pytest.mark.xdist_group("trained")
def test_an_analysis_refuses_a_config_that_differs_from_the_runs_record(trained, tmp_path):
    """digits.py without :smoke differs from the run's record (T = 4, not 2): one line, exit 2, nothing written."""
    proc = subprocess.run([sys.executable, "-m", "experiments.firing_rates", "--config", "configs/digits.py",
                           "--workdir", trained, "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2 and not os.listdir(tmp_path)
    error, = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "timesteps" in error and "--workdir" in error and "Traceback" not in proc.stderr


@pytest.mark.slow  # trains first (the trained fixture)
@pytest.mark.xdist_group("trained")
def test_energy_of_a_trained_run(trained, tmp_path):
    """A --config given with --workdir that agrees with the run's record is accepted."""
    stdout = run("energy", "--config", "configs/digits.py:smoke", "--workdir", trained, "--num_batches", "1",
                 "--out", str(tmp_path))
    rows = read(tmp_path / "energy.csv")
    assert list(rows[0]) == ["model", "method", "timesteps", "layer_index", "layer", "input_rate", "acs", "macs",
                             "ann_macs", "energy_pj", "ann_energy_pj", "ann_macs_padding_free", "literature_ops",
                             "literature_energy_pj"]
    assert [r["layer"] for r in rows] == ["conv0", "conv1", "conv2", "classifier"]
    # 3×3 convs on 8×8 and (after a 2×2 pool) 4×4: n² C_out · 9 C_in, the padded border included (the
    # usual count); without it (3n - 2)² C_in C_out; the linear 128 × 10.
    assert [float(r["ann_macs"]) for r in rows] == [8**2 * 32 * 9, 8**2 * 64 * 9 * 32, 4**2 * 128 * 9 * 64, 128 * 10]
    assert [float(r["ann_macs_padding_free"]) for r in rows] == [
        22**2 * 32, 22**2 * 32 * 64, 10**2 * 64 * 128, 128 * 10]
    # Only conv1 reads spikes; the image and the average-pooled spikes are real-valued.
    assert all(float(r["acs"]) == 0 for r in rows if r["layer"] != "conv1") and float(rows[1]["macs"]) == 0
    assert float(rows[0]["macs"]) == 2 * 22**2 * 32  # T = 2; a normalised digit has no zero pixel
    snn, ann = (sum(float(r[k]) for r in rows) for k in ("energy_pj", "ann_energy_pj"))
    with open(tmp_path / "energy.md") as f:
        text = f.read()
    assert f"SNN / ANN energy: {snn / ann:.3f}" in text and "| total " in text and text.strip() in stdout
    literature = sum(float(r["literature_energy_pj"]) for r in rows)
    assert f"the literature's estimate (input rate × ANN MACs × T): {literature / ann:.3f}" in text
    assert (tmp_path / "energy.png").stat().st_size > 10_000


@pytest.mark.slow  # a subprocess importing JAX and TF (40 s on a loaded 2-core run)
def test_firing_rates_without_a_checkpoint_says_train_first(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.firing_rates", "--config", "configs/digits.py:smoke",
                           "--workdir", str(tmp_path), "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    error, = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "no best checkpoint in" in error and "python -m experiments.train" in error
    assert not (tmp_path / "checkpoints").exists()  # looking created nothing


@pytest.mark.slow  # trains every method
def test_compare_trains_every_method_and_seed_and_tabulates(tmp_path):
    """Two methods × two seeds of the smoke digits config: runs, their mean ± std, the step's cost."""
    stdout = run("compare", "--config", "configs/digits.py:smoke", "--methods", "rate_m,sltt_k", "--seeds", "0,1",
                 "--repeats", "1", "--out", str(tmp_path))
    assert "=== run 4/4: sltt_k, seed 1" in stdout
    runs = read(tmp_path / "compare_runs.csv")
    assert [(r["method"], r["seed"]) for r in runs] == [("rate_m", "0"), ("rate_m", "1"), ("sltt_k", "0"),
                                                       ("sltt_k", "1")]
    for r in runs:
        with open(tmp_path / "runs" / f"{r['method']}_seed{r['seed']}" / "results.json") as f:
            assert float(r["test_accuracy"]) == json.load(f)["test_accuracy"]
    rows = read(tmp_path / "compare.csv")
    assert [r["method"] for r in rows] == ["rate_m", "sltt_k"]
    for row in rows:
        accuracies = [float(r["test_accuracy"]) for r in runs if r["method"] == row["method"]]
        np.testing.assert_allclose(float(row["test_accuracy"]), np.mean(accuracies))
        np.testing.assert_allclose(float(row["test_accuracy_std"]), np.std(accuracies))
        assert float(row["step_time_s"]) > 0 and int(row["compiled_temp_bytes"]) > 0
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert "| sltt_k |" in (tmp_path / "compare.md").read_text() and "| rate_m |" in stdout


def test_comparison_plot_tells_every_method_apart():
    """Eight methods at one point (equal cost and accuracy): each is in the legend once, with its
    own colour and marker, the same in both panels."""
    from ratebp_jax import METHODS, plotting

    rows = [{"method": m, "test_accuracy": 98.0, "test_accuracy_std": 0.5, "step_time_s": 0.05,
             "compiled_temp_bytes": 2**24} for m in METHODS]
    fig = plotting.plot_comparison(rows, "title")
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(METHODS)
    styles = [[(c.lines[0].get_color(), c.lines[0].get_marker()) for c in ax.containers] for ax in fig.axes]
    assert styles[0] == styles[1] and len(set(styles[0])) == len(METHODS)
