"""Offline training of the seed networks, export as self-describing artifacts (TorchScript and torch.export),
publication into the model repository, and the worker that runs training jobs. Uses only app.core."""
