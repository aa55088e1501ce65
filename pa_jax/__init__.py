"""pa_jax: nucleus instance segmentation from partially annotated images (JAX/Flax)."""
