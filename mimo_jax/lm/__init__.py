"""The MiMo-Audio speech LM."""
