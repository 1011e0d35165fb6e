"""SIP message model, parser, encoder and builders (RFC 3261).

Only what the harness needs, but done carefully: header order is preserved,
compact forms are understood, comma-separated multi-value headers are split
respecting ``<...>`` and quoted strings, and Content-Length is always
recomputed on encode.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "SipParseError",
    "SipMessage",
    "SipUri",
    "Via",
    "parse_name_addr",
    "format_name_addr",
    "canonical_name",
    "parse_params",
    "split_header_values",
    "new_branch",
    "new_tag",
    "new_call_id",
    "build_request",
    "build_response",
    "build_ack",
    "build_cancel",
    "route_set_from_record_route",
    "apply_route_set",
    "reason_phrase",
    "MAGIC_COOKIE",
    "ALLOW",
    "sdp",
    "encode",
]

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 8.1.1.7

HeaderList = Iterable[tuple[str, str]]


class SipParseError(ValueError):
    """Raised when bytes on the wire are not a valid SIP message."""


# RFC 3261 7.3.3 plus the other registered compact forms.
COMPACT_FORMS = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "x": "session-expires",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "b": "referred-by",
}

# Headers whose grammar is a comma-separated list (RFC 3261 7.3.1), so one
# header line may carry several values. Others (Authorization, Date,
# User-Agent, ...) legitimately contain commas and must not be split.
LIST_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "allow-events",
        "path",
        "service-route",
        "in-reply-to",
        "alert-info",
        "call-info",
        "error-info",
        "warning",
        "reason",
        "p-asserted-identity",
        "history-info",
    }
)

_CANONICAL = {
    "via": "Via",
    "from": "From",
    "to": "To",
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "contact": "Contact",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
    "supported": "Supported",
    "session-expires": "Session-Expires",
    "min-se": "Min-SE",
    "www-authenticate": "WWW-Authenticate",
    "record-route": "Record-Route",
    "max-forwards": "Max-Forwards",
}

_REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    420: "Bad Extension",
    422: "Session Interval Too Small",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    600: "Busy Everywhere",
    603: "Decline",
}

_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_REQUEST_LINE_RE = re.compile(r"^([A-Za-z0-9\-.!%*_+`'~]+) (\S+) (SIP/\d+\.\d+)$")
_STATUS_LINE_RE = re.compile(r"^(SIP/\d+\.\d+) (\S+)(?: (.*))?$")
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_TAG_RE = re.compile(r";\s*tag=([^;>,\s]+)", re.I)
_BRANCH_RE = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.I)
_MANDATORY = ("via", "from", "to", "call-id", "cseq")  # RFC 3261 8.1.1


def missing_mandatory(msg: SipMessage) -> str | None:
    """The first header of RFC 3261 8.1.1 (Via, From, To, Call-ID, CSeq) MSG lacks, or None."""
    for key in _MANDATORY:
        if key not in msg._index:
            return _CANONICAL[key]
    return None


def reason_phrase(status: int) -> str:
    """Default reason phrase for a status code."""
    return _REASONS.get(status, "Unknown")


_KEYS: dict[str, str] = {}  # header name as written -> lookup key (a few dozen names in practice)


def _key(name: str) -> str:
    """Lookup key of a header name: lower case, compact form expanded."""
    key = _KEYS.get(name)
    if key is None:
        low = name.strip().lower()
        key = COMPACT_FORMS.get(low, low)
        if len(_KEYS) < 1024:   # names off the wire: bounded
            _KEYS[name] = key
    return key


def canonical_name(name: str) -> str:
    """Long, conventionally capitalised form of a header name."""
    key = _key(name)
    if key in _CANONICAL:
        return _CANONICAL[key]
    return "-".join(part.capitalize() for part in key.split("-"))


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas inside
    ``<...>`` and quoted strings (RFC 3261 7.3.1)."""
    parts: list[str] = []
    cur: list[str] = []
    in_quotes = False
    escaped = False
    depth = 0
    for ch in value:
        if in_quotes:
            cur.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
            continue
        if ch == '"':
            in_quotes = True
        elif ch == "<":
            depth += 1
        elif ch == ">" and depth:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _outside_quotes(value: str, sep: str) -> tuple[list[int], bool]:
    """Where SEP stands outside quoted strings (RFC 3261 25.1), and whether a
    quote is left open at the end."""
    at: list[int] = []
    in_quotes = escaped = False
    for i, ch in enumerate(value):
        if in_quotes:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == sep:
            at.append(i)
    return at, in_quotes


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    bounds = [-1, *_outside_quotes(value, sep)[0], len(value)]
    return [value[a + 1 : b] for a, b in zip(bounds, bounds[1:])]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``;a=b;flag;c="x y"`` into an ordered dict. Names are lower-cased
    (they are case-insensitive, RFC 3261 7.3.1); flag params map to None."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    for part in _split_outside_quotes(text, ";") if '"' in text else text.split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            name, _, val = part.partition("=")
            params[name.strip().lower()] = _unquote(val)
        else:
            params[part.lower()] = None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def parse_session_expires(value: str | None) -> tuple[int | None, str | None]:
    """``1800;refresher=uac`` -> (1800, "uac") (RFC 4028 4); (None, None) if absent or bad."""
    if not value:
        return None, None
    delta, _, rest = value.partition(";")
    try:
        seconds = int(delta.strip())
    except ValueError:
        return None, None
    refresher = parse_params(rest).get("refresher")
    return seconds, refresher.lower() if refresher else None


def parse_name_addr(value: str) -> tuple[str | None, str, dict[str, str | None]]:
    """Parse a From/To/Contact/Route value into ``(display, uri, params)``.

    For the addr-spec form without angle brackets, everything after the first
    ``;`` is a header parameter, not a URI parameter (RFC 3261 20.10).
    ``display`` is None when absent; quoted display names are unquoted.
    """
    value = value.strip()
    lt = value.find("<")
    in_quotes = False
    if '"' in (value[:lt] if lt >= 0 else value):  # a quoted display name may hold '<'
        at, in_quotes = _outside_quotes(value, "<")
        lt = at[0] if at else -1
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise SipParseError(f"unterminated '<' in name-addr {value!r}")
        display_raw = value[:lt].strip()
        display = _unquote(display_raw) if display_raw else None
        uri = value[lt + 1 : gt].strip()
        params = parse_params(value[gt + 1 :])
    else:
        if in_quotes:
            raise SipParseError(f"unterminated quoted string in {value!r}")
        uri, _, rest = value.partition(";")
        uri = uri.strip()
        display = None
        params = parse_params(rest)
    if not uri:
        raise SipParseError(f"no URI in name-addr {value!r}")
    return display, uri, params


def format_name_addr(uri: str, display: str | None = None, params: dict | None = None) -> str:
    out = ""
    if display:
        escaped = display.replace("\\", "\\\\").replace('"', '\\"')
        out = f'"{escaped}" '
    out += f"<{uri}>"
    if params:
        out += _format_params(params)
    return out


_URI_RE = re.compile(
    r"^(?P<scheme>sips?):"
    r"(?:(?P<userinfo>[^@]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^;?:\[\]]+)"
    r"(?::(?P<port>\d{1,5}))?"
    r"(?P<params>;[^?]*)?"
    r"(?:\?(?P<headers>.*))?$",
    re.IGNORECASE,
)


@dataclass
class SipUri:
    """A sip:/sips: URI (RFC 3261 19.1)."""

    host: str
    user: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    scheme: str = "sip"
    password: str | None = None
    headers: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1].strip()
        m = _URI_RE.match(text)
        if not m:
            raise SipParseError(f"not a sip/sips URI: {text!r}")
        user = password = None
        if m.group("userinfo") is not None:
            user, sep, pw = m.group("userinfo").partition(":")
            password = pw if sep else None
            if not user:
                raise SipParseError(f"empty user part in URI {text!r}")
        port = int(m.group("port")) if m.group("port") else None
        if port is not None and not 0 < port < 65536:
            raise SipParseError(f"bad port in URI {text!r}")
        return cls(
            host=m.group("host"),
            user=user,
            port=port,
            params=parse_params(m.group("params") or ""),
            scheme=m.group("scheme").lower(),
            password=password,
            headers=m.group("headers"),
        )

    def __str__(self) -> str:
        out = f"{self.scheme}:"
        if self.user is not None:
            out += self.user
            if self.password is not None:
                out += f":{self.password}"
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        out += _format_params(self.params)
        if self.headers:
            out += f"?{self.headers}"
        return out

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def transport(self) -> str | None:
        return self.params.get("transport")

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


@dataclass
class Via:
    """One Via value, e.g. ``SIP/2.0/WS abc.invalid;branch=z9hG4bK..;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        m = re.match(
            r"^\s*(SIP\s*/\s*[\d.]+)\s*/\s*([A-Za-z0-9\-.]+)\s+"
            r"(\[[0-9A-Fa-f:.]+\]|[^;:\s]+)(?:\s*:\s*(\d+))?\s*(;.*)?$",
            text,
        )
        if not m:
            raise SipParseError(f"malformed Via value {text!r}")
        return cls(
            protocol=re.sub(r"\s+", "", m.group(1)).upper(),
            transport=m.group(2).upper(),
            host=m.group(3),
            port=int(m.group(4)) if m.group(4) else None,
            params=parse_params(m.group(5) or ""),
        )

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hp}{_format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")


# Unique, not secret: os.urandom (`secrets`) costs ~12 us a call, a tenth of soak's loop.
_bits = random.Random(os.urandom(16)).getrandbits


def new_branch() -> str:
    """Fresh RFC 3261 branch (magic cookie + random, 8.1.1.7)."""
    return f"{MAGIC_COOKIE}{_bits(64):016x}"


def new_tag() -> str:
    return f"{_bits(40):010x}"


def new_call_id() -> str:
    return f"{_bits(96):024x}"


ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"   # what kamleak's UAs answer


def sdp(session_id: int, version: int, port: int, ip: str = "127.0.0.1", user: str = "kamleak") -> bytes:
    """Audio offer/answer: PCMU + telephone-event (RFC 4566, RFC 3551)."""
    return (f"v=0\r\no={user} {session_id} {version} IN IP4 {ip}\r\ns=kamleak\r\n"
            f"c=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            "a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n").encode()


def encode(start: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """Wire form of a message from its parts; Content-Length is appended (HEADERS carry none)."""
    parts = [start]
    parts += [f"{n}: {v}" for n, v in headers]
    parts.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(parts) + "\r\n\r\n").encode() + body


def _tag_of(value: str) -> str | None:
    """The tag parameter of a From/To value: after the URI, never inside it."""
    gt = value.rfind(">")
    mm = _TAG_RE.search(value, gt + 1 if gt >= 0 else 0)
    return mm.group(1) if mm else None


class SipMessage:
    """A SIP request or response.

    Headers live in ``header_list`` as ``(name, value)`` in wire order (one
    entry per header line), indexed once by lookup key (lower case, compact
    form expanded), so lookups cost a dict access; the mutators keep the
    index in step.
    """

    def __init__(
        self,
        method: str | None = None,
        uri: str | None = None,
        status: int | None = None,
        reason: str | None = None,
        headers: HeaderList | None = None,
        body: bytes | str = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if (method is None) == (status is None):
            raise ValueError("give either method+uri (request) or status (response)")
        if method is not None and not uri:
            raise ValueError("a request needs a Request-URI")
        self.method = method.upper() if method else None
        self.uri = str(uri) if uri is not None else None
        self.status = int(status) if status is not None else None
        if self.status is not None and reason is None:
            reason = reason_phrase(self.status)
        self.reason = reason
        self.version = version
        self.header_list = [(n, str(v)) for n, v in (headers or [])]
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body)

    @property
    def header_list(self) -> list[tuple[str, str]]:
        """(name as written, value) per header line, in wire order. Change it
        through the mutators or by assigning a new list (both keep the index)."""
        return self._lines

    @header_list.setter
    def header_list(self, lines: HeaderList) -> None:
        self._lines = list(lines)
        self._index: dict[str, list[tuple[str, str]]] = {}
        for line in self._lines:
            self._index.setdefault(_key(line[0]), []).append(line)

    # -- parsing / encoding -------------------------------------------------

    @classmethod
    def parse(cls, data: bytes | bytearray | str, strict: bool = True,
              mandatory: bool = False) -> SipMessage:
        """Parse one SIP message. Tolerates bare LF line ends and leading
        CRLFs (RFC 3261 7.5); a body longer than Content-Length is cut (18.3),
        a shorter one is an error.

        ``strict`` (the UA) also checks the start line, header names (tokens),
        UTF-8, the CSeq and its method (8.1.1.5) and that Content-Length is
        the body's length exactly. Without it (the peer's and soak's hot path)
        only what routing needs is checked. ``mandatory`` requires Via, From,
        To, Call-ID and CSeq (8.1.1)."""
        if not isinstance(data, bytes):
            if isinstance(data, str):
                data = data.encode("utf-8")
            elif isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"cannot parse {type(data).__name__} as SIP")
        data = data.lstrip(b"\r\n")
        if not data or data.isspace():
            raise SipParseError("empty message")
        # The usual CRLF CRLF; a bare-LF blank line before it shows up as an
        # empty line below and cuts the head there.
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head_b, body = data[:end], data[end + 4 :]
        else:
            head_b, body = _split_at_blank_line(data)
        if strict:
            try:
                head = head_b.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SipParseError(f"header section is not valid UTF-8: {exc}") from None
        else:
            head = head_b.decode("utf-8", "replace")
        lines = head.replace("\r\n", "\n").split("\n")

        msg = cls.__new__(cls)
        msg.method = msg.uri = msg.status = None
        msg.reason = None
        msg.version = "SIP/2.0"
        if strict:
            _strict_start_line(msg, lines[0].strip())
        else:
            start = lines[0]
            if start.startswith("SIP/2.0 "):
                _, _, rest = start.partition(" ")
                code, _, msg.reason = rest.partition(" ")
                if not (len(code) == 3 and code.isdigit() and "1" <= code[0] <= "6"):
                    raise SipParseError(f"bad status code {code!r} in status line {start[:80]!r}")
                msg.status = int(code)
            else:
                parts = start.split(" ")
                if len(parts) != 3 or parts[2] != "SIP/2.0":
                    raise SipParseError(f"no valid start line: {start[:80]!r}")
                msg.method, msg.uri = parts[0].upper(), parts[1]

        out: list[tuple[str, str]] = []
        index: dict[str, list[tuple[str, str]]] = {}
        keys = _KEYS
        key = ""
        for line in lines[1:]:
            if not line:
                body = _split_at_blank_line(data)[1]
                break
            if line[0] in " \t":  # folded continuation line (RFC 3261 7.3.1)
                if not out:
                    raise SipParseError("continuation line before any header")
                name, value = out[-1]
                out[-1] = index[key][-1] = (name, value + " " + line.strip())
                continue
            name, colon, value = line.partition(":")
            name = name.strip()
            if not colon or (strict and not _TOKEN_RE.match(name)):
                raise SipParseError(f"malformed header line {line[:80]!r}")
            hdr = (name, value.strip())
            out.append(hdr)
            key = keys.get(name) or _key(name)
            same = index.get(key)
            if same is None:
                index[key] = [hdr]
            else:
                same.append(hdr)
        msg._lines, msg._index = out, index

        cl = index.get("content-length")
        if cl is not None:
            if strict and len(cl) > 1:
                lengths = {v.strip() for _, v in cl}
                if len(lengths) > 1:
                    raise SipParseError(f"conflicting Content-Length headers {sorted(lengths)}")
            raw_cl = cl[0][1]
            if not raw_cl.isdigit():
                raise SipParseError(f"bad Content-Length {raw_cl!r}")
            clen = int(raw_cl)
            if len(body) != clen:
                if len(body) < clen or strict:
                    raise SipParseError(f"Content-Length {clen} does not match body length {len(body)}")
                body = body[:clen]
        msg.body = body

        if strict and "cseq" in index:
            cseq = index["cseq"][0][1]
            parts = cseq.split()
            if len(parts) != 2 or not parts[0].isdigit() or not _TOKEN_RE.match(parts[1]):
                raise SipParseError(f"malformed CSeq {cseq!r}")
            # RFC 3261 8.1.1.5: the CSeq method matches the request method.
            if msg.method is not None and parts[1].upper() != msg.method:
                raise SipParseError(f"CSeq method {parts[1]!r} does not match request method {msg.method!r}")
        if mandatory and (missing := missing_mandatory(msg)):
            raise SipParseError(f"missing mandatory header {missing}")
        return msg

    def encode(self) -> bytes:
        """Wire form; Content-Length always reflects the actual body."""
        if "content-length" not in self._index:
            return encode(self.start_line, self._lines, self.body)
        lines = [self.start_line]
        wrote_cl = False
        for name, value in self._lines:
            if _key(name) == "content-length":
                if not wrote_cl:
                    lines.append(f"{name}: {len(self.body)}")
                    wrote_cl = True
                continue
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def __bytes__(self) -> bytes:
        return self.encode()

    def __str__(self) -> str:
        return self.encode().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"<SipMessage {self.summary()}>"

    def copy(self) -> SipMessage:
        return SipMessage.parse(self.encode())

    # -- start line ----------------------------------------------------------

    @property
    def is_request(self) -> bool:
        return self.method is not None

    @property
    def is_response(self) -> bool:
        return self.status is not None

    @property
    def start_line(self) -> str:
        if self.is_request:
            return f"{self.method} {self.uri} {self.version}"
        return f"{self.version} {self.status} {self.reason or ''}".rstrip()

    def summary(self) -> str:
        """One-line description for logs: ``INVITE sip:x`` / ``200 OK (INVITE)``."""
        if self.is_request:
            return f"{self.method} {self.uri}"
        cseq = self.header("CSeq", "").split()   # never raises: it also describes bad messages
        return f"{self.status} {self.reason}" + (f" ({cseq[1].upper()})" if len(cseq) == 2 else "")

    # -- headers -------------------------------------------------------------

    def headers(self, name: str) -> list[str]:
        """All values of a header, list headers split per value."""
        key = _KEYS.get(name) or _key(name)
        lines = self._index.get(key)
        if not lines:
            return []
        if key not in LIST_HEADERS:
            return [v for _, v in lines]
        out: list[str] = []
        for _, v in lines:
            if "," in v:
                out.extend(split_header_values(v))
            elif v.strip():
                out.append(v.strip())
        return out

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of a header (for list headers: the first element)."""
        key = _KEYS.get(name) or _key(name)
        lines = self._index.get(key)
        if not lines:
            return default
        value = lines[0][1]
        if key in LIST_HEADERS and ("," in value or not value or value != value.strip()):
            values = self.headers(name)
            return values[0] if values else default
        return value

    def header_lines(self, name: str) -> list[tuple[str, str]]:
        """The lines of a header as written (name, value), in wire order: what a
        response copies verbatim (Via, Record-Route)."""
        return list(self._index.get(_KEYS.get(name) or _key(name), ()))

    def has_header(self, name: str) -> bool:
        return (_KEYS.get(name) or _key(name)) in self._index

    def add_header(self, name: str, value: str) -> SipMessage:
        line = (name, str(value))
        self._lines.append(line)
        self._index.setdefault(_key(name), []).append(line)
        return self

    def prepend_header(self, name: str, value: str) -> SipMessage:
        line = (name, str(value))
        self._lines.insert(0, line)
        self._index.setdefault(_key(name), []).insert(0, line)
        return self

    def remove_header(self, name: str) -> SipMessage:
        key = _key(name)
        if self._index.pop(key, None) is not None:
            self._lines = [line for line in self._lines if _key(line[0]) != key]
        return self

    def set_header(self, name: str, value: str) -> SipMessage:
        """Replace all occurrences with one line, at the first one's position."""
        key = _key(name)
        line = (name, str(value))
        if key not in self._index:
            return self.add_header(name, value)
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self._lines:
            if _key(n) != key:
                out.append((n, v))
            elif not done:
                out.append(line)
                done = True
        self._lines = out
        self._index[key] = [line]
        return self

    # -- convenience ---------------------------------------------------------

    def _first(self, key: str) -> str | None:
        """First line's value of a non-list header, by lookup key."""
        lines = self._index.get(key)
        return lines[0][1] if lines else None

    @property
    def call_id(self) -> str | None:
        return self._first("call-id")

    @property
    def cseq(self) -> tuple[int, str] | None:
        value = self._first("cseq")
        if value is None:
            return None
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SipParseError(f"malformed CSeq {value!r}")
        return int(parts[0]), parts[1].upper()

    @property
    def from_tag(self) -> str | None:
        value = self._first("from")
        return _tag_of(value) if value is not None else None

    @property
    def to_tag(self) -> str | None:
        value = self._first("to")
        return _tag_of(value) if value is not None else None

    @property
    def top_via(self) -> Via | None:
        value = self.header("Via")
        return Via.parse(value) if value is not None else None

    @property
    def top_via_branch(self) -> str | None:
        """branch of the top Via (the transaction key, RFC 3261 17.1.3); None if absent.
        `top_via` parses (and validates) the whole Via."""
        value = self.header("Via")
        if value is None:
            return None
        mm = _BRANCH_RE.search(value)
        return mm.group(1) if mm else None

    @property
    def contact_uri(self) -> str | None:
        """URI of the first Contact (the remote target, RFC 3261 12.1)."""
        value = self.header("Contact")
        return parse_name_addr(value)[1] if value else None

    @property
    def ruri_user(self) -> str:
        """User part of the Request-URI ('sip:600@127.0.0.1;x' -> '600', '' if none):
        what a PBX routes on, without parsing the whole URI (`SipUri`)."""
        scheme, colon, rest = (self.uri or "").partition(":")
        user, at, _ = (rest if colon else scheme).partition("@")
        return user if at else ""

    @property
    def content_type(self) -> str | None:
        return self.header("Content-Type")

    @property
    def text(self) -> str:
        """Body decoded as UTF-8 (for SDP and friends)."""
        return self.body.decode("utf-8", errors="replace")


def _split_at_blank_line(data: bytes) -> tuple[bytes, bytes]:
    """Header section and body around the first blank line, CRLF or bare LF."""
    m = _HEAD_END_RE.search(data)
    if not m:
        raise SipParseError("no empty line after the header section (truncated message?)")
    return data[: m.start()], data[m.end() :]


def _strict_start_line(msg: SipMessage, start: str) -> None:
    """Request-Line / Status-Line (RFC 3261 7.1, 7.2), checked in full."""
    if start.upper().startswith("SIP/"):
        sm = _STATUS_LINE_RE.match(start)
        if not sm:
            raise SipParseError(f"malformed status line {start[:80]!r}")
        if sm.group(1).upper() != "SIP/2.0":
            raise SipParseError(f"unsupported SIP version {sm.group(1)!r}")
        code = sm.group(2)
        if not (len(code) == 3 and code.isdigit() and "1" <= code[0] <= "6"):
            raise SipParseError(f"bad status code {code!r} in status line {start[:80]!r}")
        msg.status, msg.reason = int(code), sm.group(3) or ""
        return
    rm = _REQUEST_LINE_RE.match(start)
    if not rm:
        if ":" in start and _TOKEN_RE.match(start.split(":", 1)[0].strip() or "-"):
            raise SipParseError(f"no start line (first line looks like a header: {start[:80]!r})")
        raise SipParseError(f"no valid start line: {start[:80]!r}")
    if rm.group(3).upper() != "SIP/2.0":
        raise SipParseError(f"unsupported SIP version {rm.group(3)!r}")
    msg.method, msg.uri = rm.group(1).upper(), rm.group(2)


# -- routing helpers -----------------------------------------------------------


def route_set_from_record_route(msg: SipMessage, as_uac: bool = True) -> list[str]:
    """Route set of a dialog from the Record-Route of the dialog-creating
    message: reversed at the UAC (RFC 3261 12.1.2), as-is at the UAS (12.1.1)."""
    values = msg.headers("Record-Route")
    return list(reversed(values)) if as_uac else values


def apply_route_set(remote_target: str, route_set: list[str]) -> tuple[str, list[str]]:
    """Request-URI and Route values for an in-dialog request (RFC 3261
    12.2.1.1): loose routing keeps the remote target as R-URI; a strict
    router (no ``lr``) becomes the R-URI and the target goes last."""
    if not route_set:
        return remote_target, []
    first_uri = parse_name_addr(route_set[0])[1]
    try:
        loose = SipUri.parse(first_uri).lr
    except SipParseError:
        loose = True
    if loose:
        return remote_target, list(route_set)
    stripped = SipUri.parse(first_uri)
    # Strict routing: R-URI is the first route with header-unsafe parts removed.
    stripped.params = {k: v for k, v in stripped.params.items()
                       if k not in ("method", "maddr", "ttl", "transport", "lr")}
    stripped.headers = None
    return str(stripped), list(route_set[1:]) + [f"<{remote_target}>"]


# -- builders --------------------------------------------------------------------


def build_request(
    method: str,
    uri: str,
    *,
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    via: str | Iterable[str],
    contact: str | None = None,
    route: Iterable[str] = (),
    max_forwards: int = 70,
    extra_headers: HeaderList = (),
    body: bytes | str = b"",
    content_type: str | None = None,
) -> SipMessage:
    """A request with the RFC 3261 8.1.1 mandatory headers in the usual order.
    ``from_``/``to`` are full header values (including any tag)."""
    vias = [via] if isinstance(via, str) else list(via)
    headers: list[tuple[str, str]] = [("Via", v) for v in vias]
    headers += [("Route", r) for r in route]
    headers += [
        ("Max-Forwards", str(max_forwards)),
        ("From", from_),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method.upper()}"),
    ]
    if contact:
        headers.append(("Contact", contact))
    headers += list(extra_headers)
    if body and content_type:
        headers.append(("Content-Type", content_type))
    return SipMessage(method=method, uri=uri, headers=headers, body=body)


def _with_tag(value: str, tag: str) -> str:
    if _tag_of(value) is not None:
        return value
    if "<" not in value:
        # addr-spec form: wrap so the tag cannot be mistaken for a URI param.
        display, uri, params = parse_name_addr(value)
        return format_name_addr(uri, display, {**params, "tag": tag})
    return f"{value};tag={tag}"


def build_response(
    request: SipMessage,
    status: int,
    reason: str | None = None,
    to_tag: str | None = None,
    extra_headers: HeaderList = (),
    body: bytes | str = b"",
    content_type: str | None = None,
    copy_record_route: bool = False,
) -> SipMessage:
    """Response per RFC 3261 8.2.6.2: all Vias in order, From, To (plus
    ``to_tag`` if the To has none yet), Call-ID and CSeq copied.
    ``copy_record_route`` is for responses to dialog-creating requests
    (12.1.1)."""
    if not request.is_request:
        raise ValueError("build_response needs a request")
    headers: list[tuple[str, str]] = [("Via", v) for v in request.headers("Via")]
    if copy_record_route:
        headers += [("Record-Route", v) for v in request.headers("Record-Route")]
    to = request.header("To") or ""
    if to_tag and status > 100:
        to = _with_tag(to, to_tag)
    headers += [
        ("From", request.header("From") or ""),
        ("To", to),
        ("Call-ID", request.header("Call-ID") or ""),
        ("CSeq", request.header("CSeq") or ""),
    ]
    headers += list(extra_headers)
    if body and content_type:
        headers.append(("Content-Type", content_type))
    return SipMessage(status=status, reason=reason, headers=headers, body=body)


def build_ack(
    invite: SipMessage,
    response: SipMessage,
    *,
    route_set: list[str] | None = None,
    remote_target: str | None = None,
    via: str | None = None,
    extra_headers: HeaderList = (),
) -> SipMessage:
    """ACK for a final response to ``invite``.

    Non-2xx (RFC 3261 17.1.1.3): hop-by-hop, same R-URI, top Via (same
    branch) and Route as the INVITE, To from the response.
    2xx (13.2.2.4): a new in-dialog request: R-URI = remote target, Route
    from the route set, new branch, CSeq number of the INVITE. Route set and
    remote target default to what ``response`` establishes (Record-Route
    reversed, Contact), which is right for an initial INVITE; for a
    re-INVITE pass the dialog's route set.
    """
    if response.status is None or response.status < 200:
        raise ValueError("ACK is only sent for final responses")
    cseq_num = invite.cseq[0] if invite.cseq else 1
    to = response.header("To") or invite.header("To") or ""
    common = [
        ("Max-Forwards", "70"),
        ("From", invite.header("From") or ""),
        ("To", to),
        ("Call-ID", invite.header("Call-ID") or ""),
        ("CSeq", f"{cseq_num} ACK"),
    ]
    if response.status >= 300:
        headers = [("Via", invite.headers("Via")[0])]
        headers += [("Route", r) for r in invite.headers("Route")]
        headers += common + list(extra_headers)
        return SipMessage(method="ACK", uri=invite.uri, headers=headers)
    if route_set is None:
        route_set = route_set_from_record_route(response, as_uac=True)
    if remote_target is None:
        contact = response.header("Contact")
        remote_target = parse_name_addr(contact)[1] if contact else invite.uri
    ruri, routes = apply_route_set(remote_target, route_set)
    if via is None:
        top = Via.parse(invite.headers("Via")[0])
        top.params["branch"] = new_branch()  # order of the other params kept
        via = str(top)
    headers = [("Via", via)] + [("Route", r) for r in routes] + common + list(extra_headers)
    return SipMessage(method="ACK", uri=ruri, headers=headers)


def build_cancel(invite: SipMessage, extra_headers: HeaderList = ()) -> SipMessage:
    """CANCEL for a pending ``invite`` (RFC 3261 9.1): Request-URI, Call-ID,
    To, From (tags included: the To has none yet) and the CSeq number are the
    INVITE's, the method CANCEL; one Via, the INVITE's top Via (same branch:
    the CANCEL is matched to the INVITE by it, 9.2); the INVITE's Route
    values, so the CANCEL takes the INVITE's path; no body."""
    if not invite.is_request or invite.method != "INVITE":
        raise ValueError("build_cancel needs an INVITE (RFC 3261 9.1: never cancel another method)")
    cseq_num = invite.cseq[0] if invite.cseq else 1
    headers: list[tuple[str, str]] = [("Via", invite.headers("Via")[0])]
    headers += [("Route", r) for r in invite.headers("Route")]
    headers += [
        ("Max-Forwards", invite.header("Max-Forwards") or "70"),
        ("From", invite.header("From") or ""),
        ("To", invite.header("To") or ""),
        ("Call-ID", invite.header("Call-ID") or ""),
        ("CSeq", f"{cseq_num} CANCEL"),
    ]
    headers += list(extra_headers)
    return SipMessage(method="CANCEL", uri=invite.uri, headers=headers)
