"""Unit tests for kamleak.harness.sip.message (parsing, encoding, builders)."""
from __future__ import annotations

import pytest

from kamleak.harness.sip.message import (
    SipMessage,
    SipParseError,
    SipUri,
    Via,
    apply_route_set,
    build_ack,
    build_request,
    build_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_name_addr,
    route_set_from_record_route,
    split_header_values,
)

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)

INVITE = (
    "INVITE sip:600123@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy1, SIP/2.0/WS abc.invalid;received=127.0.0.1;rport=40000;branch=z9hG4bKua1\r\n"
    "Record-Route: <sip:127.0.0.1;r2=on;lr>, <sip:127.0.0.1:5066;transport=ws;r2=on;lr>\r\n"
    "Max-Forwards: 69\r\n"
    'f: "Smith, Alice" <sip:alice@127.0.0.1>;tag=fromtag1\r\n'
    "t: <sip:600123@127.0.0.1>\r\n"
    "i: call-1@test\r\n"
    "CSeq: 1 INVITE\r\n"
    "m: <sip:alice@abc.invalid;transport=ws;ob>\r\n"
    "k: timer\r\n"
    "x: 1800;refresher=uac\r\n"
    "Min-SE: 90\r\n"
    "c: application/sdp\r\n"
    f"l: {len(SDP)}\r\n"
    "\r\n" + SDP
)


def test_parse_request_with_compact_headers():
    msg = SipMessage.parse(INVITE.encode())
    assert msg.is_request and not msg.is_response
    assert (msg.method, msg.uri) == ("INVITE", "sip:600123@127.0.0.1")
    assert msg.call_id == "call-1@test"
    assert msg.cseq == (1, "INVITE")
    assert msg.from_tag == "fromtag1"
    assert msg.to_tag is None
    assert msg.header("Session-Expires") == "1800;refresher=uac"
    assert msg.header("session-expires") == msg.header("x")
    assert msg.header("Supported") == "timer"
    assert msg.header("Content-Type") == "application/sdp"
    assert msg.header("Contact") == "<sip:alice@abc.invalid;transport=ws;ob>"
    assert msg.body == SDP.encode()
    assert msg.header("X-Missing") is None
    assert msg.header("X-Missing", "dflt") == "dflt"


def test_multi_value_via_and_record_route_on_one_line():
    msg = SipMessage.parse(INVITE)
    assert msg.headers("Via") == [
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy1",
        "SIP/2.0/WS abc.invalid;received=127.0.0.1;rport=40000;branch=z9hG4bKua1",
    ]
    assert msg.header("v") == "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy1"
    assert msg.top_via_branch == "z9hG4bKproxy1"
    assert msg.headers("Record-Route") == [
        "<sip:127.0.0.1;r2=on;lr>",
        "<sip:127.0.0.1:5066;transport=ws;r2=on;lr>",
    ]
    # From is not a list header: the comma in the quoted display name stays.
    assert msg.headers("From") == ['"Smith, Alice" <sip:alice@127.0.0.1>;tag=fromtag1']


def test_multi_value_headers_on_several_lines_keep_order():
    raw = (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n"
        "Via: SIP/2.0/UDP 127.0.10.1;branch=z9hG4bK2, SIP/2.0/UDP 127.0.10.2;branch=z9hG4bK3\r\n"
        "Record-Route: <sip:p2.example;lr>\r\n"
        "Record-Route: <sip:p1.example;lr;foo=\"a,b\">\r\n"
        "From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = SipMessage.parse(raw)
    assert msg.status == 200 and msg.reason == "OK"
    assert [Via.parse(v).branch for v in msg.headers("Via")] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]
    assert msg.headers("Record-Route") == ["<sip:p2.example;lr>", '<sip:p1.example;lr;foo="a,b">']
    assert route_set_from_record_route(msg) == ['<sip:p1.example;lr;foo="a,b">', "<sip:p2.example;lr>"]
    assert route_set_from_record_route(msg, as_uac=False) == msg.headers("Record-Route")
    assert msg.to_tag == "2" and msg.cseq == (7, "INVITE")


def test_bare_lf_and_leading_crlf_tolerated():
    raw = "\r\n\r\nOPTIONS sip:x@y SIP/2.0\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bKa\nCSeq: 2 OPTIONS\nl: 5\n\nhello"
    msg = SipMessage.parse(raw)
    assert msg.method == "OPTIONS" and msg.body == b"hello"
    assert msg.encode().count(b"\r\n") == msg.encode().count(b"\n")  # output always CRLF


def test_folded_header_line():
    msg = SipMessage.parse("BYE sip:a@b SIP/2.0\r\nSubject: hello\r\n  world\r\nCSeq: 3 BYE\r\n\r\n")
    assert msg.header("Subject") == "hello world"
    assert msg.header("s") == "hello world"


def test_body_without_content_length_is_kept():
    msg = SipMessage.parse("MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\nhi there")
    assert msg.body == b"hi there"
    assert b"Content-Length: 8\r\n" in msg.encode()


def test_encode_parse_round_trip_and_content_length_fixed():
    msg = SipMessage.parse(INVITE)
    msg.body = msg.body + b"a=sendrecv\r\n"
    wire = msg.encode()
    assert f"l: {len(msg.body)}\r\n".encode() in wire  # rewritten in place, name kept
    again = SipMessage.parse(wire)
    assert again.header_list == [
        (n, str(len(msg.body)) if n == "l" else v) for n, v in msg.header_list
    ]
    assert again.body == msg.body and again.start_line == msg.start_line
    assert SipMessage.parse(again.encode()).encode() == wire


def test_encode_adds_missing_content_length():
    msg = SipMessage(method="OPTIONS", uri="sip:x@y", headers=[("CSeq", "1 OPTIONS")], body="abc")
    assert msg.encode().endswith(b"CSeq: 1 OPTIONS\r\nContent-Length: 3\r\n\r\nabc")


def test_header_editing():
    msg = SipMessage(method="OPTIONS", uri="sip:x@y", headers=[("Via", "a"), ("Route", "<sip:r1;lr>"), ("route", "<sip:r2;lr>")])
    msg.set_header("Route", "<sip:only;lr>")
    assert msg.header_list == [("Via", "a"), ("Route", "<sip:only;lr>")]
    msg.prepend_header("Via", "b").add_header("X-A", "1").remove_header("route")
    assert msg.headers("Via") == ["b", "a"] and not msg.has_header("Route")


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"", "empty"),
        (b"\r\n\r\n", "empty"),
        (b"Via: SIP/2.0/WS x;branch=z9hG4bK1\r\nCSeq: 1 BYE\r\n\r\n", "no start line"),
        (b"hello world\r\n\r\n", "no valid start line"),
        (b"SIP/2.0 2000 OK\r\nCSeq: 1 INVITE\r\n\r\n", "bad status code"),
        (b"SIP/2.0 abc OK\r\n\r\n", "bad status code"),
        (b"SIP/2.0 099 Low\r\n\r\n", "bad status code"),
        (b"SIP/3.0 200 OK\r\n\r\n", "unsupported SIP version"),
        (b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\nContent-Length: 10\r\n\r\nshort", "Content-Length 10 does not match body length 5"),
        (b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\nContent-Length: 2\r\n\r\ntoo long", "Content-Length 2 does not match"),
        (b"INVITE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
        (b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"INVITE sip:a@b SIP/2.0\r\nCSeq: one INVITE\r\n\r\n", "malformed CSeq"),
        (b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 BYE\r\n\r\n", "does not match request method"),
        (b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\n", "no empty line"),
    ],
)
def test_garbage_raises_sip_parse_error(raw, needle):
    with pytest.raises(SipParseError, match=needle):
        SipMessage.parse(raw)


def test_non_strict_truncates_long_body():
    msg = SipMessage.parse(b"MESSAGE sip:a@b SIP/2.0\r\nl: 2\r\n\r\nabcd", strict=False)
    assert msg.body == b"ab"


def test_split_header_values_respects_quotes_and_brackets():
    value = '"Doe, John" <sip:j@x;a=1,2>;q=0.5, <sip:k@y>, "esc \\" ," <sip:z@z>'
    assert split_header_values(value) == [
        '"Doe, John" <sip:j@x;a=1,2>;q=0.5',
        "<sip:k@y>",
        '"esc \\" ," <sip:z@z>',
    ]


def test_parse_name_addr_forms():
    assert parse_name_addr('"Smith, Alice" <sip:alice@h;transport=ws>;tag=x;lr') == (
        "Smith, Alice", "sip:alice@h;transport=ws", {"tag": "x", "lr": None})
    assert parse_name_addr("Bob <sip:bob@h>") == ("Bob", "sip:bob@h", {})
    # addr-spec form: params after ';' belong to the header (RFC 3261 20.10)
    assert parse_name_addr("sip:carol@h;tag=9") == (None, "sip:carol@h", {"tag": "9"})
    assert parse_name_addr('"a \\"q\\"" <sip:a@b>')[0] == 'a "q"'
    with pytest.raises(SipParseError):
        parse_name_addr("<sip:a@b")


def test_sip_uri_parse_and_str():
    u = SipUri.parse("sip:alice@127.0.0.1:5066;transport=ws;lr;r2=on")
    assert (u.scheme, u.user, u.host, u.port) == ("sip", "alice", "127.0.0.1", 5066)
    assert u.lr and u.transport == "ws" and u.params["r2"] == "on"
    assert str(u) == "sip:alice@127.0.0.1:5066;transport=ws;lr;r2=on"
    v6 = SipUri.parse("<sips:[::1]:5061>")
    assert (v6.scheme, v6.user, v6.host, v6.port, v6.lr) == ("sips", None, "[::1]", 5061, False)
    assert str(SipUri(host="h.invalid", user="a", params={"transport": "ws", "ob": None})) == "sip:a@h.invalid;transport=ws;ob"
    with pytest.raises(SipParseError):
        SipUri.parse("tel:+123")


def test_via_parse():
    v = Via.parse("SIP/2.0/WS abc.invalid;branch=z9hG4bKx;rport=1234;received=127.0.10.1")
    assert (v.transport, v.host, v.port, v.branch) == ("WS", "abc.invalid", None, "z9hG4bKx")
    assert v.params["rport"] == "1234"
    assert str(Via.parse("SIP/2.0/UDP 127.1.2.3:5060;branch=z9hG4bKy;rport")) == "SIP/2.0/UDP 127.1.2.3:5060;branch=z9hG4bKy;rport"


def test_identifiers_are_fresh():
    assert new_branch().startswith("z9hG4bK") and new_branch() != new_branch()
    assert new_tag() != new_tag() and new_call_id() != new_call_id()


def _invite():
    return build_request(
        "INVITE", "sip:600123@127.0.0.1",
        from_='"Alice" <sip:alice@127.0.0.1>;tag=ft',
        to="<sip:600123@127.0.0.1>",
        call_id="cid", cseq=5,
        via="SIP/2.0/WS a.invalid;branch=z9hG4bKinv;rport",
        contact="<sip:alice@a.invalid;transport=ws;ob>",
        route=["<sip:outbound.example;lr>"],
        body=SDP, content_type="application/sdp",
    )


def test_build_request():
    inv = _invite()
    assert inv.cseq == (5, "INVITE") and inv.header("Max-Forwards") == "70"
    assert inv.header("Route") == "<sip:outbound.example;lr>"
    assert SipMessage.parse(inv.encode()).body == SDP.encode()


def test_build_response_copies_vias_and_adds_to_tag():
    req = SipMessage.parse(INVITE)
    resp = build_response(req, 200, to_tag="tt", body="x", content_type="text/plain",
                          extra_headers=[("Contact", "<sip:b@h>")], copy_record_route=True)
    assert resp.start_line == "SIP/2.0 200 OK"
    assert resp.headers("Via") == req.headers("Via")
    assert resp.headers("Record-Route") == req.headers("Record-Route")
    assert resp.header("From") == req.header("From")
    assert resp.header("To") == "<sip:600123@127.0.0.1>;tag=tt"
    assert resp.to_tag == "tt" and resp.call_id == req.call_id and resp.cseq == req.cseq
    # A 100 Trying gets no tag; an existing tag is never replaced.
    assert build_response(req, 100, to_tag="tt").to_tag is None
    assert build_response(resp_as_request(resp), 200, to_tag="other").to_tag == "tt"
    # addr-spec To is wrapped so the tag is a header param
    bare = SipMessage(method="BYE", uri="sip:x@y", headers=[("To", "sip:x@y"), ("CSeq", "1 BYE")])
    assert build_response(bare, 200, to_tag="q").header("To") == "<sip:x@y>;tag=q"


def resp_as_request(resp):
    return SipMessage(method="BYE", uri="sip:x@y", headers=resp.header_list)


def test_ack_for_non_2xx_is_hop_by_hop():
    inv = _invite()
    busy = build_response(inv, 486, to_tag="rt")
    ack = build_ack(inv, busy)
    assert ack.method == "ACK" and ack.uri == inv.uri
    assert ack.headers("Via") == [inv.header("Via")]  # same branch (RFC 3261 17.1.1.3)
    assert ack.headers("Route") == inv.headers("Route")
    assert ack.cseq == (5, "ACK") and ack.to_tag == "rt" and ack.from_tag == "ft"
    assert ack.body == b""


def test_ack_for_2xx_is_end_to_end():
    inv = _invite()
    ok = build_response(inv, 200, to_tag="rt", extra_headers=[
        ("Record-Route", "<sip:p2.example;lr>, <sip:p1.example;lr>"),
        ("Contact", "<sip:bob@127.0.2.9:5080>"),
    ])
    ack = build_ack(inv, ok)
    assert ack.uri == "sip:bob@127.0.2.9:5080"  # remote target
    assert ack.headers("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]  # RR reversed
    assert ack.top_via_branch != inv.top_via_branch and ack.top_via_branch.startswith("z9hG4bK")
    assert Via.parse(ack.header("Via")).params.keys() == Via.parse(inv.header("Via")).params.keys()
    assert ack.cseq == (5, "ACK") and ack.to_tag == "rt"
    # Explicit dialog state wins (re-INVITE case).
    ack2 = build_ack(inv, ok, route_set=[], remote_target="sip:bob@127.51.100.1", via="SIP/2.0/WS a.invalid;branch=z9hG4bKnew")
    assert ack2.uri == "sip:bob@127.51.100.1" and not ack2.has_header("Route") and ack2.top_via_branch == "z9hG4bKnew"
    with pytest.raises(ValueError):
        build_ack(inv, build_response(inv, 180))


def test_apply_route_set_loose_and_strict():
    assert apply_route_set("sip:b@t", ["<sip:p1;lr>", "<sip:p2;lr>"]) == ("sip:b@t", ["<sip:p1;lr>", "<sip:p2;lr>"])
    assert apply_route_set("sip:b@t", []) == ("sip:b@t", [])
    # strict router first: it becomes the R-URI, target goes last (RFC 3261 12.2.1.1)
    assert apply_route_set("sip:b@t", ["<sip:strict.example;transport=udp>", "<sip:p2;lr>"]) == (
        "sip:strict.example", ["<sip:p2;lr>", "<sip:b@t>"])


def test_lean_parse_checks_what_routing_needs():
    msg = SipMessage.parse(INVITE.encode() + b"trailing", strict=False, mandatory=True)
    assert msg.body == SDP.encode() and msg.top_via_branch == "z9hG4bKproxy1"
    assert msg.contact_uri == "sip:alice@abc.invalid;transport=ws;ob" and msg.ruri_user == "600123"
    assert msg.header_lines("Via") == [("Via", INVITE.split("\r\n")[1][5:])]
    with pytest.raises(SipParseError, match="missing mandatory header From"):
        SipMessage.parse(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", strict=False, mandatory=True)
    with pytest.raises(SipParseError, match="does not match body length"):
        SipMessage.parse(b"MESSAGE sip:a@b SIP/2.0\r\nl: 9\r\n\r\nabcd", strict=False)


def test_bare_lf_blank_line_before_a_crlf_one_ends_the_head():
    msg = SipMessage.parse(b"OPTIONS sip:x@y SIP/2.0\nCSeq: 2 OPTIONS\nl: 9\n\nhi\r\n\r\nyou")
    assert msg.header_list == [("CSeq", "2 OPTIONS"), ("l", "9")] and msg.body == b"hi\r\n\r\nyou"


def test_mutators_keep_the_index_in_step():
    msg = SipMessage(method="OPTIONS", uri="sip:x@y", headers=[("v", "a"), ("CSeq", "1 OPTIONS")])
    msg.prepend_header("Via", "b").add_header("Route", "<sip:r;lr>").set_header("cseq", "2 OPTIONS")
    assert msg.headers("Via") == ["b", "a"] and msg.header_lines("v")[1] == ("v", "a")
    assert msg.cseq == (2, "OPTIONS") and msg.header_list[2] == ("cseq", "2 OPTIONS")
    msg.remove_header("via")
    assert not msg.has_header("v") and msg.header_list == [("cseq", "2 OPTIONS"), ("Route", "<sip:r;lr>")]
    msg.header_list = [("i", "c1")]
    assert msg.call_id == "c1" and not msg.has_header("Route")
