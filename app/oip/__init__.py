"""The Open Inference Protocol v2 over REST (KServe, Triton), so their stock clients work unchanged.

- `metadata`: the tensors a model takes and gives, as the protocol's metadata describes them.
- `codec`: an inference request's JSON header and binary tensor data, checked cheaply on the event loop.
- `pixels`: the input tensor's values to the [N, 28, 28] pixels a model takes, in the inference thread.
- `response`: probabilities and labels out, as JSON or binary tensor data.
- `schemas`: the response bodies, for OpenAPI.
"""
