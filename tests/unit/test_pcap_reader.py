"""The pcap reader behind sip-trace.txt's captured lines, and the config run label."""

from __future__ import annotations

import struct
from pathlib import Path

from kamleak.harness.probes.capture import udp_datagrams
from kamleak.harness.reporting.text import captured_sip, run_label

MESSAGE = (b"MESSAGE sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
           b"From: <sip:kamleak@127.0.0.1>;tag=1\r\nTo: <sip:call-ended@127.0.0.1>\r\n"
           b"Call-ID: abc\r\nCSeq: 10 MESSAGE\r\nContent-Length: 0\r\n\r\n")


def _frame(src_port: int, dst_port: int, payload: bytes, proto: int = 17) -> bytes:
    udp = struct.pack(">HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, proto, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
    return b"\x00" * 12 + b"\x08\x00" + ip          # Ethernet, as tcpdump writes `lo`


def _pcap(*frames: bytes) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1700000000 + i, 250000, len(f), len(f)) + f
    return out


def test_udp_datagrams_of_a_loopback_capture():
    pcap = _pcap(_frame(5060, 5060, MESSAGE), _frame(5060, 7000, b"x", proto=6))
    [d] = udp_datagrams(pcap)
    assert d.src == ("127.0.0.1", 5060) and d.dst == ("127.0.0.1", 5060)
    assert d.payload == MESSAGE and abs(d.ts - 1700000000.25) < 1e-6


def test_captured_sip_skips_asterisk_and_non_sip():
    pcap = _pcap(_frame(5060, 5060, MESSAGE), _frame(5060, 5080, MESSAGE), _frame(5060, 5060, b"\r\n\r\n"))
    found = captured_sip([pcap, "no pcap: tcpdump missing"], skip_ports={5080})
    assert [(d.dst[1], m.method) for d, m in found] == [(5060, "MESSAGE")]


def test_not_a_pcap():
    assert udp_datagrams(b"") == [] and udp_datagrams(b"\x0a\x0d\x0d\x0a" + b"\0" * 40) == []


class _Cfg:
    path = Path("/etc/kamailio/my.cfg")


def test_run_label_names_the_config():
    assert run_label("uac_req_send") == "uac_req_send"
    assert run_label("none", _Cfg()) == "config my.cfg"
    assert run_label("uac_req_send", _Cfg()) == "config my.cfg + uac_req_send"
