"""Evaluation: metrics, judges and task runners behind `python -m mimo_jax.evaluate`; codec
reconstruction metrics of a folder (`codec`, behind `python -m mimo_jax.eval_codec`)."""
