"""mimo-jax: MiMo-Audio in JAX/Flax."""
