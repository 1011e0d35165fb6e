"""SIP message layer and SIP-over-WebSocket user agent."""

from kamleak.harness.sip.message import (ALLOW, MAGIC_COOKIE, SipMessage, SipParseError, SipUri, Via,
    apply_route_set, build_ack, build_request, build_response, format_name_addr, new_branch, new_call_id,
    new_tag, parse_name_addr, parse_params, reason_phrase, route_set_from_record_route, sdp,
    split_header_values)
from kamleak.harness.sip.ua import (CallFailed, ClientTransaction, Dialog, ReceivedError, TraceEntry,
    UAError, UATimeout, WebSocketUA)

__all__ = [
    "ALLOW",
    "MAGIC_COOKIE",
    "SipMessage",
    "SipParseError",
    "SipUri",
    "Via",
    "apply_route_set",
    "build_ack",
    "build_request",
    "build_response",
    "format_name_addr",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_name_addr",
    "parse_params",
    "reason_phrase",
    "route_set_from_record_route",
    "sdp",
    "split_header_values",
    "CallFailed",
    "ClientTransaction",
    "Dialog",
    "ReceivedError",
    "TraceEntry",
    "UAError",
    "UATimeout",
    "WebSocketUA",
]
