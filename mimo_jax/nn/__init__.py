"""Pure building blocks shared by every model part (norms, RoPE, attention, MLPs, scanned stacks)."""
