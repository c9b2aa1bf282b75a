"""A trained run's evaluation network as a NIR graph file (ratebp_jax.export, SPEC §7).

    python -m experiments.export --workdir runs/digits_hard --out digits.nir [--which best|latest]

Reads the config the run recorded (WORKDIR/config.json) and its best (highest
test accuracy) or latest checkpoint, and writes the graph with nir.write: one
time step of the network; present the normalised image at each of the run's T
steps and average the output node over them. A soft-reset run (the default
neuron) is refused unless --soft_reset is given: NIR's LIF resets to a
potential, so the graph then records the subtractive reset in its LIF nodes'
metadata, which readers ignore. Prints the export time.
"""

from __future__ import annotations

import time

from absl import flags

from experiments import cli, common

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run (experiments.train).")
_OUT = flags.DEFINE_string("out", None, "The NIR file to write (HDF5, e.g. model.nir).")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint: best test accuracy, or latest.")
_SOFT_RESET = flags.DEFINE_bool("soft_reset", False, "Export a soft-reset model, its reset recorded in the "
                                "LIF nodes' metadata (NIR's LIF resets to v_reset; readers ignore the metadata).")
_DT = flags.DEFINE_float("dt", None, "Seconds per time step in the graph (default: ratebp_jax.export.DEFAULT_DT).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    common.start(argv)
    import nir

    from ratebp_jax import export

    workdir, which = _WORKDIR.value, _WHICH.value
    model, variables, split, config = common.trained_run(workdir, which=which)
    start = time.perf_counter()
    try:
        graph = export.to_nir(model, variables, input_shape=split.input_shape, timesteps=config.timesteps,
                              reset="soft" if _SOFT_RESET.value else None,
                              dt=export.DEFAULT_DT if _DT.value is None else _DT.value)
    except ValueError as error:
        cli.fail(error)
    nir.write(_OUT.value, graph)
    seconds = time.perf_counter() - start
    print(f"{which} checkpoint of {workdir} ({config.model}, T = {config.timesteps}) written to {_OUT.value}: "
          f"{len(graph.nodes)} nodes, {len(graph.edges)} edges, exported in {seconds:.1f} s")


if __name__ == "__main__":
    cli.run(main)
