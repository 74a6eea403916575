"""Launch templates (installed as ``mimo_toolkit.templates``); see README.md here."""
