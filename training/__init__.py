"""Offline training of the seed networks and export of self-describing TorchScript artifacts."""
