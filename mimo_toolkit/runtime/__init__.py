"""The in-job runtime: runs under torchrun (imports torch and megatron-core)."""
