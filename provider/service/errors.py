"""Every answer that is not a success: JSON `{"error": {"code", "message", "request_id"}}`
with a stable code. Client mistakes are 4xx; anything unforeseen is a 500 whose body
says only `internal` (the detail goes to the log, never a traceback to the client)."""

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import constants as C
from ..errors import PKCS11Error
from ..governance import GovernanceError
from ..log import LOG

STATUS_OF = {"not_found": 404, "conflict": 409, "invalid_argument": 400, "failed_precondition": 409,
             "permission_denied": 403, "approval_required": 428, "unavailable": 503}
# an engine refusal (the gate, a mechanism) as the service's (status, code)
RV_OF = {C.CKR_KEY_FUNCTION_NOT_PERMITTED: (403, "permission_denied"),
         C.CKR_KEY_HANDLE_INVALID: (409, "failed_precondition"),
         C.CKR_MECHANISM_INVALID: (409, "failed_precondition"),
         C.CKR_ENCRYPTED_DATA_INVALID: (400, "invalid_ciphertext"),
         C.CKR_ENCRYPTED_DATA_LEN_RANGE: (400, "invalid_ciphertext"),
         C.CKR_DATA_LEN_RANGE: (400, "invalid_argument"),
         C.CKR_KEY_UNEXTRACTABLE: (409, "failed_precondition"),       # a wrap of a key that may not leave
         C.CKR_KEY_NOT_WRAPPABLE: (409, "failed_precondition"),
         C.CKR_FUNCTION_REJECTED: (428, "approval_required"),
         C.CKR_FUNCTION_FAILED: (503, "unavailable")}
HTTP_CODES = {400: "bad_request", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
              405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 429: "rate_limited",
              431: "header_too_large"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra or {}


def body(request_id: str, code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, "request_id": request_id, **extra}}


def answer(request: Request | None, status: int, code: str, message: str, headers=None, **extra) -> JSONResponse:
    rid = getattr(request.state, "request_id", "") if request is not None else ""
    return JSONResponse(body(rid, code, message, **extra), status_code=status, headers=headers)


def install(app) -> None:
    @app.exception_handler(ApiError)
    async def _api(request, exc: ApiError):
        return answer(request, exc.status, exc.code, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(GovernanceError)
    async def _gov(request, exc: GovernanceError):
        extra = {}
        if exc.approval is not None:
            extra["approval"] = {"id": exc.approval.id, "status": exc.approval.status}
        return answer(request, STATUS_OF.get(exc.code, 400), exc.code, exc.message, **extra)

    @app.exception_handler(PKCS11Error)
    async def _engine(request, exc: PKCS11Error):
        status, code = RV_OF.get(exc.rv, (400, "invalid_argument"))
        return answer(request, status, code, exc.reason or C.name_of("CKR_", exc.rv))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                          for e in exc.errors()[:5])
        return answer(request, 422, "invalid_argument", where[:500] or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return answer(request, exc.status_code, HTTP_CODES.get(exc.status_code, "error"), message, exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        LOG.error("service: %s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return answer(request, 500, "internal", "internal error")
