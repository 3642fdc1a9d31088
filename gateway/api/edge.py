"""The edge: identify → limit → intake → answer, once, for every path a request can take.

The fast lane (gateway.api.fast_lane) and the Litestar routes both hand their requests here and get
back a finished `Answer` (status, headers, body), so 401, 403, 429 and every refusal are decided and
spelled in one place. The rate limit costs no round trip of its own: Redis checks it (and a signed
request's nonce) in the same script as the reservation; only a request refused before the
reservation (a 422, a 403) or one that never reserves (a status query) runs the admission alone.
"""

import functools
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from gateway.api.problems import MEDIA_TYPE, RETRY_LATER, problem_body, unavailable_detail
from gateway.errors import Refused, Unauthorized
from gateway.idempotency.reservation import Quota
from gateway.idempotency.store import Decision, IdempotencyStore
from gateway.intake.flow import Intake
from gateway.intake.outcomes import REFUSALS, REPLAYED_NONCE, BulkOutcome, Outcome
from gateway.intake.schemas import ENCODER, BulkAnswer, BulkItem, TransactionRequest
from gateway.partners.authentication import Authenticator, Caller
from gateway.partners.message import Message, message_of
from gateway.partners.registry import Partner
from gateway.partners.signatures import ACCEPT_SIGNATURE
from gateway.telemetry.metrics import Metrics
from settlement.errors import DependencyUnavailable

log = logging.getLogger("gateway.api.edge")

JSON = (b"content-type", b"application/json")
PROBLEM = (b"content-type", MEDIA_TYPE.encode())
POLICY = "partner"  # the name of the RateLimit policy (draft-ietf-httpapi-ratelimit-headers)
ANONYMOUS = "-"  # the partner label of a request no credential identified (never a partner id)
REALM = 'Bearer realm="settlement-gateway"'

BodyReader = Callable[[], Awaitable[bytes]]  # raises Refused("body-too-large")
# the intake of one kind of submission, given the identified caller, the body, Idempotency-Key, traceparent
Submission = Callable[["Caller", bytes, str | None, str | None], Awaitable["Answer"]]


class Answer(NamedTuple):
    """A finished answer: the transport adds only Content-Length and X-Request-ID."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    transaction_id: str | None = None
    partner: str | None = None


class Admitted(NamedTuple):
    """A request admitted at the edge without reserving (a status query): its caller and the headers
    every answer to it carries."""

    caller: Caller
    headers: list[tuple[bytes, bytes]]


class EdgeRefusal(Exception):
    """A request the edge refused outside the submission path; its answer is ready to send."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json"


@functools.cache
def _policy(burst: int, rate: float) -> tuple[bytes, bytes]:
    window = max(1, math.ceil(burst / rate))
    return b"ratelimit-policy", b'"%s";q=%d;w=%d' % (POLICY.encode(), burst, window)


def ratelimit_headers(partner: Partner, quota: tuple[int, int, int] | None) -> list[tuple[bytes, bytes]]:
    """RateLimit-Policy (the partner's limit: `q` requests at once, whole again after `w` seconds) and,
    when Redis told us, RateLimit (`r` left now, the burst whole again in `t` seconds)."""
    if not partner.rate:
        return []
    policy = _policy(partner.burst, partner.rate)
    if quota is None or quota[0] < 0:
        return [policy]
    reset = -(-quota[1] // 1_000_000)  # whole seconds, rounded up
    return [policy, (b"ratelimit", b'"%s";r=%d;t=%d' % (POLICY.encode(), quota[0], reset))]


# The `field` label of the metrics takes only these values: a partner chooses unknown field names and
# metadata keys, and one request must not be able to create a new time series per name.
FIELD_LABELS = frozenset(TransactionRequest.__struct_fields__) | {""}


def field_label(field: str) -> str:
    """`field` as a bounded metric label: a request field, the whole body (""), or `other`."""
    if field in FIELD_LABELS:
        return field
    head = field.split(".", 1)[0].split("[", 1)[0]
    return head if head != field and head in FIELD_LABELS else "other"


class Edge:
    """Every request's way in. Made per worker when the app starts."""

    def __init__(
        self,
        authenticator: Authenticator,
        intake: Intake,
        store: IdempotencyStore,
        metrics: Metrics,
        retry_after_seconds: int,
        bulk_max_items: int,
    ) -> None:
        self.authenticator = authenticator
        self._intake = intake
        self._store = store
        self._metrics = metrics
        self._retry_after = str(retry_after_seconds).encode()
        self._bulk_max_items = bulk_max_items

    async def submit(self, message: Message, body: bytes | BodyReader, bulk: bool = False) -> Answer:
        """POST /api/v1/transactions/: identify, then the intake (which admits in its Redis round trip).

        `bulk`: POST /api/v1/transactions/bulk, the intake of every transaction of the array. The whole
        request is refused only for what concerns all of it (credentials, media type, not an array, the
        partner's limit, Redis down); anything else is decided per transaction.

        Every submission goes through the body, the caller, the media type, then its intake; a refusal or
        an unexpected error becomes its problem answer."""
        intake = self._bulk if bulk else self._single
        caller: Caller | None = None
        fields = message.fields
        try:
            if not isinstance(body, bytes):
                body = await body()
            caller = self.authenticator.identify(message, body)
            if not is_json(fields.get("content-type")):
                raise Refused("unsupported-media-type", "send application/json")
            return await intake(caller, body, fields.get("idempotency-key"), fields.get("traceparent"))
        except (Refused, DependencyUnavailable) as exc:
            return await self.refusal(caller, exc)
        except Exception:
            log.exception("unhandled error on %s %s", message.method, message.path)
            status, payload = problem_body("internal-error", "the request could not be processed")
            return Answer(status, [PROBLEM], payload, partner=caller.partner.id if caller else None)

    async def _single(
        self, caller: Caller, body: bytes, idempotency_key: str | None, traceparent: str | None
    ) -> Answer:
        outcome = await self._intake.submit(
            caller.partner.id, body, idempotency_key, traceparent, caller.admission, caller.forbids
        )
        return self.accepted(caller.partner, outcome)

    async def _bulk(self, caller: Caller, body: bytes, idempotency_key: str | None, traceparent: str | None) -> Answer:
        if idempotency_key is not None:
            raise Refused(
                "invalid-parameter",
                "a bulk request takes no Idempotency-Key header: each transaction carries its idempotency_key",
            )
        admission = caller.admission
        # a limited partner's bulk request counts one request per transaction, so it fits in one burst
        max_items = min(self._bulk_max_items, admission.burst) if admission.interval_us else self._bulk_max_items
        outcome = await self._intake.submit_all(
            caller.partner.id, body, traceparent, max_items, admission, caller.forbids
        )
        return self.answered_all(caller.partner, outcome)

    def accepted(self, partner: Partner, outcome: Outcome) -> Answer:
        """202 for a new transaction, 200 for an exact resubmission."""
        self._metrics.tally(self._metrics.intake, partner.id, "replayed" if outcome.replayed else "accepted").inc()
        assert outcome.timing is not None
        headers = [JSON, (b"server-timing", outcome.timing.header().encode())]
        if partner.rate:
            headers += ratelimit_headers(partner, outcome.quota)
        if outcome.replayed:
            headers.append((b"idempotent-replayed", b"true"))
        return Answer(200 if outcome.replayed else 202, headers, outcome.body, outcome.transaction_id, partner.id)

    def answered_all(self, partner: Partner, outcome: BulkOutcome) -> Answer:
        """200 when every transaction was accepted, else 207: per transaction its index, and the status
        and body the single endpoint would have answered. Retry-After when any of them should retry."""
        results: list[BulkItem] = []
        counted: Counter[str] = Counter()
        unavailable: dict[str, tuple[int, bytes]] = {}  # one problem (and one log line) per dependency
        retry = False
        for index, item in enumerate(outcome.items):
            if isinstance(item, Outcome):
                status, payload = 200 if item.replayed else 202, item.body
                counted["replayed" if item.replayed else "accepted"] += 1
            elif isinstance(item, DependencyUnavailable):
                if item.dependency not in unavailable:
                    unavailable[item.dependency] = problem_body("dependency-unavailable", unavailable_detail(item))
                status, payload = unavailable[item.dependency]
                counted["dependency_unavailable"] += 1
                retry = True
            else:
                status, payload = problem_body(item.cause, item.detail, item.errors)
                self._count(partner.id, item)
                retry = retry or item.cause in RETRY_LATER
            results.append(BulkItem(index, status, msgspec.Raw(payload)))
        for name, count in counted.items():
            self._metrics.tally(self._metrics.intake, partner.id, name).inc(count)
        headers = [JSON, (b"server-timing", outcome.timing.header().encode())]
        if partner.rate:
            headers += ratelimit_headers(partner, outcome.quota)
        if retry:
            headers.append((b"retry-after", self._retry_after))
        status = 200 if counted["accepted"] == len(results) else 207
        return Answer(status, headers, ENCODER.encode(BulkAnswer(results)), partner=partner.id)

    async def admit(self, message: Message) -> Admitted:
        """A request that reserves nothing (a status query): identify, then the admission alone.
        Raises EdgeRefusal with the answer to send."""
        caller: Caller | None = None
        try:
            caller = self.authenticator.identify(message, b"")
            quota = await self._admission(caller)
        except (Refused, DependencyUnavailable) as exc:
            raise EdgeRefusal(await self.refusal(caller, exc, count=False)) from None
        return Admitted(caller, ratelimit_headers(caller.partner, quota))

    async def _admission(self, caller: Caller) -> Quota | None:
        """The admission alone, when the partner has one (a limit or a nonce); Refused when it says no."""
        admission = caller.admission
        if not admission.interval_us and not admission.nonce_ttl_ms:
            return None
        decision, quota = await self._store.admit(admission)
        if decision is Decision.LIMITED:
            raise Refused(*REFUSALS[decision], quota=quota)
        if decision is Decision.NONCE_REPLAYED:
            raise Unauthorized(REPLAYED_NONCE, signature=True, quota=quota)
        return quota

    async def refusal(self, caller: Caller | None, exc: Refused | DependencyUnavailable, count: bool = True) -> Answer:
        """The problem answer for `exc`. A refusal decided before Redis was asked still counts against
        the partner's limit (and burns a signed request's nonce): the admission runs alone first."""
        if caller is not None and isinstance(exc, Refused) and exc.quota is None and not isinstance(exc, Unauthorized):
            try:
                quota = await self._admission(caller)
                exc.quota = quota
            except Refused as admission_refused:
                exc = admission_refused
            except DependencyUnavailable:
                pass  # the refusal stands; Redis being down does not change it
        partner = caller.partner if caller is not None else None
        if count:
            self._count(partner.id if partner else ANONYMOUS, exc)
        headers = [PROBLEM]
        if isinstance(exc, DependencyUnavailable):
            status, payload = problem_body("dependency-unavailable", unavailable_detail(exc))
            headers.append((b"retry-after", self._retry_after))
        else:
            status, payload = problem_body(exc.cause, exc.detail, exc.errors)
            if exc.cause == "rate-limited" and exc.quota is not None:
                headers.append((b"retry-after", str(max(1, math.ceil(exc.quota[2] / 1_000_000))).encode()))
            elif exc.cause in RETRY_LATER:
                headers.append((b"retry-after", self._retry_after))
            if isinstance(exc, Unauthorized):
                headers.append((b"www-authenticate", _challenge(exc).encode()))
                if exc.signature:
                    headers.append((b"accept-signature", ACCEPT_SIGNATURE.encode()))
        if partner is not None and partner.rate:
            headers += ratelimit_headers(partner, exc.quota if isinstance(exc, Refused) else None)
        return Answer(status, headers, payload, partner=partner.id if partner else None)

    def _count(self, partner: str, exc: Refused | DependencyUnavailable) -> None:
        """Count a refused submission by partner and cause, and each broken validation rule."""
        metrics = self._metrics
        if isinstance(exc, DependencyUnavailable):
            metrics.tally(metrics.intake, partner, "dependency_unavailable").inc()
            return
        metrics.tally(metrics.intake, partner, exc.cause.replace("-", "_")).inc()
        for field, code, _ in exc.errors or ():
            metrics.tally(metrics.validation_errors, field_label(field), code).inc()


def _challenge(exc: Unauthorized) -> str:
    """WWW-Authenticate (RFC 6750): no error code when no credential was sent."""
    if exc.error is None:
        return REALM
    detail = exc.detail.replace("\\", "").replace('"', "'")
    return f'{REALM}, error="{exc.error}", error_description="{detail}"'


async def partner_of(request: Request) -> str:
    """Litestar dependency `partner` of the routes that reserve nothing (status queries): the edge
    identifies and admits the caller; its RateLimit headers go on whatever the route answers."""
    edge: Edge = request.app.state.edge
    admitted = await edge.admit(message_of(request.scope))
    state = request.scope.setdefault("state", {})
    state["partner"] = admitted.caller.partner.id
    state["answer_headers"] = admitted.headers
    return admitted.caller.partner.id


async def submitted(request: Request, bulk: bool) -> Response[bytes]:
    """A submission Litestar's route took (a chunked body, or one over the fast lane's limit): read its
    body within the route's limit and hand it to the same edge as the fast lane."""
    edge: Edge = request.app.state.edge
    limit = "GATEWAY_BULK_MAX_BODY_BYTES" if bulk else "GATEWAY_MAX_BODY_BYTES"

    async def body() -> bytes:
        try:
            return await request.body()
        except HTTPException as exc:
            if exc.status_code == 413:
                raise Refused("body-too-large", f"the body is larger than {limit}") from None
            raise

    answer = await edge.submit(message_of(request.scope), body, bulk)
    return as_response(request, answer)


def as_response(request: Request, answer: Answer) -> Response[bytes]:
    """An edge's answer as Litestar's response, its partner and transaction noted for the access log."""
    state = request.scope.setdefault("state", {})
    state["transaction_id"] = answer.transaction_id
    state["partner"] = answer.partner
    headers = {name.decode(): value.decode() for name, value in answer.headers[1:]}
    media_type = answer.headers[0][1].decode()  # every answer's first header is its content type
    return Response(answer.body, status_code=answer.status, media_type=media_type, headers=headers)


def edge_refusal(request: Request, exc: EdgeRefusal) -> Response[bytes]:
    """Exception handler: the answer the edge already made."""
    return as_response(request, exc.answer)
