"""The model: specs per module (TE or portable layers), the MIMO provider, initialisation."""
