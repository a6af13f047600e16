"""pixelserve: the HTTP service. Depends on model artifacts only, never on `training`."""
