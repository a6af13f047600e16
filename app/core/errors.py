"""The service's one exception tree: each error carries its HTTP status and a short code.

No web framework here: training and the job store raise these too. `app.http_errors` maps the
tree to HTTP responses and to the OpenAPI document, in one place.
"""

from __future__ import annotations


class PixelserveError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(PixelserveError):
    status_code = 404
    code = "model_not_found"


class UnsupportedImage(PixelserveError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidImage(PixelserveError):
    """An image that decodes but has nothing to classify, or a missing/empty upload."""

    status_code = 422
    code = "invalid_image"


class MalformedUpload(PixelserveError):
    """A body that cannot be parsed: malformed multipart or JSON, or too many form fields."""

    status_code = 400
    code = "malformed_request"


class MissingUpload(PixelserveError):
    status_code = 422
    code = "missing_file"


class ImageTooLarge(PixelserveError):
    status_code = 413
    code = "image_too_large"


class TooManyImages(PixelserveError):
    """More images in one request than PIXELSERVE_MAX_IMAGES_PER_REQUEST."""

    status_code = 413
    code = "too_many_images"


class BodyTooLarge(PixelserveError):
    status_code = 413
    code = "body_too_large"


class Unauthorized(PixelserveError):
    """No `Authorization: Bearer <token>` header."""

    status_code = 401
    code = "unauthorized"


class Forbidden(PixelserveError):
    """Wrong admin token, or admin routes disabled (no PIXELSERVE_ADMIN_TOKEN)."""

    status_code = 403
    code = "forbidden"


class JobNotFound(PixelserveError):
    status_code = 404
    code = "job_not_found"


class VersionNotFound(PixelserveError):
    status_code = 404
    code = "version_not_found"


class Conflict(PixelserveError):
    """The resource is in a state that does not allow this (a finished job, a broken version)."""

    status_code = 409
    code = "conflict"


class NotReady(PixelserveError):
    status_code = 503
    code = "not_ready"


class InvalidInferenceRequest(PixelserveError):
    """An inference request (Open Inference Protocol) whose JSON, tensors or binary data do not fit the model."""

    status_code = 400
    code = "invalid_inference_request"


class ProbeNotReady(PixelserveError):
    """Not ready, as the Open Inference Protocol's health probes say it: a 4xx status (Triton's 400)."""

    status_code = 400
    code = "not_ready"


class UnsupportedContentEncoding(PixelserveError):
    """A request body compressed other than gzip or deflate."""

    status_code = 415
    code = "unsupported_content_encoding"


class Overloaded(PixelserveError):
    """Overloaded: the queue is past its bound or its delay target; shed at once, retry after `Retry-After`."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # app.http_errors sends it as Retry-After


class DeadlineExceeded(PixelserveError):
    """The request waited past its deadline (PIXELSERVE_REQUEST_TIMEOUT_S, or the OIP `timeout` parameter) unrun."""

    status_code = 504
    code = "deadline_exceeded"


class CaptureNotFound(PixelserveError):
    status_code = 404
    code = "capture_not_found"


class InvalidLabel(PixelserveError):
    """A label the capture's model does not have."""

    status_code = 422
    code = "invalid_label"
