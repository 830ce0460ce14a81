"""Evaluation: codec reconstruction metrics (`codec_metrics`) and their command (`codec`)."""
