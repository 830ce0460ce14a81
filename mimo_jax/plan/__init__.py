"""The AOT planner: compile the real steps for a TPU topology on any host (libtpu, no TPU) and
report per-chip memory against HBM, FLOPs from the jaxpr, and predicted speed.

`python -m mimo_jax.plan --help`; modules: topology (product names, chips, abstract devices,
meshes), flops (jaxpr and analytic counts), report (compile, memory verdict, JSON/Markdown),
steps (the train and generation steps as abstract sharded inputs).
"""
