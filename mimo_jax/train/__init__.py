"""Training: config schema, optimizer groups, train state and step, Orbax checkpoints, metrics,
the loop, and the `python -m mimo_jax.train` launcher."""
