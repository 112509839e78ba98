"""Server-side check of AWS Signature Version 4, using botocore's own signer to recompute.

Both forms are accepted: the ``Authorization`` header (what SDKs and ``SigV4Auth`` send) and the
presigned query string (``X-Amz-Signature`` ..., what ``SigV4QueryAuth`` produces). The signature
is recomputed over exactly the headers the client listed in ``SignedHeaders``, the raw path and
query as they came over the wire, and the body, with the secret the lab knows for the access key.

Errors mirror AWS: an unknown access key is ``InvalidClientTokenId``, a wrong signature or a
credential scoped to another service is ``SignatureDoesNotMatch``, a request without any
signature is ``MissingAuthenticationToken``; all are HTTP 403. Session tokens are not checked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import MultiMapping

SIGV4_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW_S = 15 * 60
_AUTH_HEADER_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]+)$"
)


class SignatureError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Caller:
    access_key: str
    region: str
    service: str


@dataclass(frozen=True, slots=True)
class _Parsed:
    access_key: str
    date: str
    region: str
    service: str
    signed_headers: list[str]
    signature: str
    amz_date: str
    query: list[tuple[str, str]]  # decoded query parameters the signature covers
    expires_s: int | None


def verify(
    *,
    method: str,
    raw_path_and_query: str,
    headers: MultiMapping[str],
    body: bytes,
    credentials: Mapping[str, str],
    now: dt.datetime,
    services: tuple[str, ...],
) -> Caller:
    """Return who signed the request, or raise SignatureError.

    ``headers`` must be case-insensitive (aiohttp's request headers are) and hold the values as
    they were sent.
    ``services``: the signing names the endpoint answers to (``("rds",)``, ``("sts",)``).
    """
    raw_path, _, raw_query = raw_path_and_query.partition("?")
    parsed = _parse(headers, raw_query)
    secret = credentials.get(parsed.access_key)
    if secret is None:
        raise SignatureError(
            "InvalidClientTokenId", "The security token included in the request is invalid."
        )
    if parsed.service not in services:
        raise SignatureError(
            "SignatureDoesNotMatch",
            f"Credential should be scoped to correct service: '{services[0]}'.",
        )
    _check_time(parsed, now)
    missing = [h for h in parsed.signed_headers if h not in headers]
    if "host" not in parsed.signed_headers or missing:
        raise SignatureError(
            "SignatureDoesNotMatch", "The request signature does not cover the required headers."
        )
    declared_hash = headers.get("x-amz-content-sha256")
    if declared_hash and declared_hash != "UNSIGNED-PAYLOAD":
        if declared_hash != hashlib.sha256(body).hexdigest():
            raise SignatureError(
                "SignatureDoesNotMatch", "The provided x-amz-content-sha256 does not match."
            )

    signed = {name: ",".join(headers.getall(name)) for name in parsed.signed_headers}
    # The query is canonicalised from decoded parameters, as AWS does: a client or proxy may
    # have re-encoded it on the way (yarl turns %2F back into / for instance).
    request = AWSRequest(
        method=method,
        url=f"http://{headers['host']}{raw_path}",
        headers=signed,
        data=body,
        params=parsed.query,
    )
    request.context["timestamp"] = parsed.amz_date
    signer = SigV4Auth(Credentials(parsed.access_key, secret), parsed.service, parsed.region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, parsed.signature):
        raise SignatureError(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return Caller(parsed.access_key, parsed.region, parsed.service)


def credential_region(headers: Mapping[str, str], raw_query: str = "") -> str | None:
    """The region of the credential scope, if the request carries one (signed or not)."""
    try:
        return _parse(headers, raw_query).region
    except SignatureError:
        return None


def _parse(headers: Mapping[str, str], raw_query: str) -> _Parsed:
    authorization = headers.get("authorization")
    if authorization:
        match = _AUTH_HEADER_RE.match(authorization.strip())
        if match is None:
            raise SignatureError(
                "IncompleteSignature", "Authorization header is not a valid AWS4-HMAC-SHA256 one."
            )
        credential, signed_headers, signature = match.groups()
        amz_date = headers.get("x-amz-date", "")
        return _scope(credential, signed_headers, signature, amz_date, _pairs(raw_query), None)
    pairs = _pairs(raw_query)
    params = dict(pairs)
    if "X-Amz-Signature" not in params:
        raise SignatureError(
            "MissingAuthenticationToken", "Request is missing Authentication Token"
        )
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        raise SignatureError("IncompleteSignature", "X-Amz-Algorithm must be AWS4-HMAC-SHA256.")
    without_signature = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
    try:
        expires_s = int(params.get("X-Amz-Expires", "3600"))
    except ValueError:
        raise SignatureError("IncompleteSignature", "X-Amz-Expires is not a number.") from None
    return _scope(
        params.get("X-Amz-Credential", ""),
        params.get("X-Amz-SignedHeaders", ""),
        params["X-Amz-Signature"],
        params.get("X-Amz-Date", ""),
        without_signature,
        expires_s,
    )


def _scope(
    credential: str,
    signed_headers: str,
    signature: str,
    amz_date: str,
    query: list[tuple[str, str]],
    expires_s: int | None,
) -> _Parsed:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not signed_headers:
        raise SignatureError("IncompleteSignature", "The credential scope is malformed.")
    return _Parsed(
        access_key=parts[0],
        date=parts[1],
        region=parts[2],
        service=parts[3],
        signed_headers=[h.strip().lower() for h in signed_headers.split(";")],
        signature=signature,
        amz_date=amz_date,
        query=query,
        expires_s=expires_s,
    )


def _pairs(raw_query: str) -> list[tuple[str, str]]:
    out = []
    for pair in raw_query.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            out.append((unquote(key), unquote(value)))
    return out


def _check_time(parsed: _Parsed, now: dt.datetime) -> None:
    try:
        signed_at = dt.datetime.strptime(parsed.amz_date, SIGV4_TIMESTAMP_FORMAT).replace(
            tzinfo=dt.UTC
        )
    except ValueError:
        raise SignatureError(
            "IncompleteSignature", "The request has no valid X-Amz-Date."
        ) from None
    if parsed.date != parsed.amz_date[:8]:
        raise SignatureError(
            "SignatureDoesNotMatch", "The credential scope date does not match X-Amz-Date."
        )
    age_s = (now - signed_at).total_seconds()
    if parsed.expires_s is not None:
        if age_s > parsed.expires_s or age_s < -MAX_CLOCK_SKEW_S:
            raise SignatureError("AccessDenied", "Request has expired.")
    elif abs(age_s) > MAX_CLOCK_SKEW_S:
        raise SignatureError(
            "SignatureDoesNotMatch",
            f"Signature expired: {parsed.amz_date} is more than 15 minutes away from the "
            f"server time {now.strftime(SIGV4_TIMESTAMP_FORMAT)}.",
        )
