"""mimo-toolkit command line."""
