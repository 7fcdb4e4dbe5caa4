"""Embedded task generators and (paper profile) dataset loaders."""
