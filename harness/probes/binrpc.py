"""A client for Kamailio's `ctl` module (the BINRPC socket `kamcmd` talks to), in Python.

Most production configs load `ctl`; few expose JSON-RPC over HTTP, and
`kamcmd` need not be installed where the watcher runs.  The wire format is
upstream's src/modules/ctl/binrpc.h (read at 38711a3e78):

  header   | 0xA1 | type<<4 | (LL-1)<<2 | (CL-1) | total_len (LL bytes) | cookie (CL bytes) |
           type 0 request, 1 reply, 3 fault; big endian
  record   | S:1 size:3 type:4 | [len, when S] | value |
           S=0: size is the value's length; S=1: size is the length of the
           length that follows.  int 0, str 1 (0-terminated, length counts
           the 0), double 2 (a fixed-point long long x1000), struct 3,
           array 4, avp name 5 (a str inside a struct, its value follows),
           bytes 6.  A struct/array ends with the same type and S=1, size 0.

A request is the method name (str) then its parameters; a reply is a list
of values, a fault an int code and a str message.  Structs come back as
`kamleak.harness.probes.rpc.Pairs` (repeated names kept: tm.list puts every cell of a hash
bucket in one struct, as jsonrpcs does), so `kamleak.harness.probes.rpc.parse_tm_list` reads
either transport's answer.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from typing import Any

from kamleak.harness.errors import RPCError
from kamleak.harness.probes.rpc import Pairs, RPCCallError, _numbers, _one, _plain, parse_tm_list


class CtlCallError(RPCCallError):
    """Kamailio answered with a BINRPC fault."""

    def __init__(self, method: str, code, message: str):
        super().__init__(method, code, message)
        self.cause = f"Kamailio ctl {method} failed: {code} {message}".rstrip()
        self.args = (self.line(),)

MAGIC_VERS = 0xA1
REQ, REPL, FAULT = 0, 1, 3
T_INT, T_STR, T_DOUBLE, T_STRUCT, T_ARRAY, T_AVP, T_BYTES = 0, 1, 2, 3, 4, 5, 6
# A reply larger than this is refused before it is read: the bound on what
# the watcher keeps (ctl's own send buffers are 32 KiB + 8 KiB per struct).
MAX_REPLY = 64 * 1024 * 1024


class BinRPCError(RPCError):
    """The peer's bytes are not BINRPC (or not a complete packet)."""


def _int_bytes(i: int) -> bytes:
    """Minimal big-endian bytes of a 32-bit int (binrpc_get_int_len: 0 -> none)."""
    u = i & 0xFFFFFFFF
    out = u.to_bytes(4, "big").lstrip(b"\0")
    return out


def _record(rtype: int, value: bytes) -> bytes:
    n = len(value)
    if n < 8:
        return bytes([(n << 4) | rtype]) + value
    lb = _int_bytes(n)
    return bytes([0x80 | (len(lb) << 4) | rtype]) + lb + value


def encode_value(v: Any) -> bytes:
    if isinstance(v, bool) or isinstance(v, int):
        return _record(T_INT, _int_bytes(int(v)))
    if isinstance(v, float):
        return _record(T_DOUBLE, _int_bytes(int(v * 1000)))
    if isinstance(v, bytes):
        return _record(T_BYTES, v)
    return _record(T_STR, str(v).encode() + b"\0")


def header(ptype: int, body_len: int, cookie: int) -> bytes:
    lb = _int_bytes(body_len) or b"\0"
    cb = _int_bytes(cookie) or b"\0"
    return bytes([MAGIC_VERS, (ptype << 4) | ((len(lb) - 1) << 2) | (len(cb) - 1)]) + lb + cb


def encode_request(method: str, params=(), cookie: int = 1) -> bytes:
    body = encode_value(method) + b"".join(encode_value(p) for p in params)
    return header(REQ, len(body), cookie) + body


def parse_header(buf: bytes) -> tuple[int, int, int, int] | None:
    """(type, body length, cookie, header length), or None when more bytes are needed."""
    if len(buf) < 2:
        return None
    if buf[0] != MAGIC_VERS:
        raise BinRPCError(f"not a BINRPC packet (first bytes {bytes(buf[:8])!r})")
    ptype = buf[1] >> 4
    if ptype not in (REQ, REPL, FAULT):
        raise BinRPCError(f"BINRPC packet of unknown type {ptype}")
    ll, cl = ((buf[1] >> 2) & 3) + 1, (buf[1] & 3) + 1
    if len(buf) < 2 + ll + cl:
        return None
    tlen = int.from_bytes(buf[2:2 + ll], "big")
    cookie = int.from_bytes(buf[2 + ll:2 + ll + cl], "big")
    return ptype, tlen, cookie, 2 + ll + cl


class _End:
    """A struct/array end mark while decoding."""

    def __init__(self, rtype: int):
        self.rtype = rtype


def _signed(b: bytes) -> int:
    u = int.from_bytes(b, "big") if b else 0
    # binrpc_read_int() packs up to 4 bytes into a C int.
    return u - (1 << 32) if len(b) == 4 and u & 0x80000000 else u


def decode_body(body: bytes) -> list:
    """Values of a BINRPC body: ints, floats, strs, bytes, lists, `Pairs`."""
    pos = 0

    def record():
        nonlocal pos
        if pos >= len(body):
            raise BinRPCError("BINRPC body ends inside a record")
        b = body[pos]
        pos += 1
        rtype, size = b & 0x0F, b >> 4
        end = False
        # A double's 4 bits are its value's length, up to 8 (binrpc_add_llong_type: a
        # negative one takes 8 bytes, header 0x82); no other record is longer than 7 so.
        if rtype != T_DOUBLE and size & 8:
            ln = size & 7
            if pos + ln > len(body):
                raise BinRPCError("BINRPC body ends inside a length")
            size = int.from_bytes(body[pos:pos + ln], "big")
            pos += ln
            end = size == 0 and ln == 0
        if rtype in (T_STRUCT, T_ARRAY):
            if end:
                return _End(rtype)
            return container(rtype)
        if pos + size > len(body):
            raise BinRPCError(f"BINRPC record of {size} bytes overruns the body")
        raw = body[pos:pos + size]
        pos += size
        if rtype == T_INT:
            return _signed(raw)
        if rtype == T_DOUBLE:
            # binrpc_write_llong(): the fewest bytes of the value as unsigned, so only an
            # 8-byte one can be negative (a 1-byte 0xC8 is 200: 0.2).
            v = int.from_bytes(raw, "big") if raw else 0
            return (v - (1 << 64) if len(raw) == 8 and v >> 63 else v) / 1000.0
        if rtype in (T_STR, T_AVP):
            text = raw[:-1] if raw.endswith(b"\0") else raw
            s = text.decode("utf-8", "replace")
            return ("avp", s) if rtype == T_AVP else s
        if rtype == T_BYTES:
            return bytes(raw)
        raise BinRPCError(f"BINRPC record of unknown type {rtype}")

    def container(rtype: int):
        if rtype == T_ARRAY:
            items = []
            while True:
                v = record()
                if isinstance(v, _End):
                    if v.rtype != T_ARRAY:
                        raise BinRPCError("BINRPC array closed by a struct end")
                    return items
                items.append(v)
        # ctl writes an array member of a struct (struct_add "[") as a struct whose
        # items have no names (binrpc_run.c rpc_struct_add, 5.8.5: '[' is BINRPC_T_STRUCT;
        # ws.dump's "connections"): all unnamed, it is read as the array it is.
        pairs, items = Pairs(), []
        while True:
            v = record()
            if isinstance(v, _End):
                if v.rtype != T_STRUCT:
                    raise BinRPCError("BINRPC struct closed by an array end")
                if items and pairs:
                    raise BinRPCError("BINRPC struct mixes named and unnamed members")
                return items or pairs
            if not (isinstance(v, tuple) and v[0] == "avp"):
                items.append(v)
                continue
            val = record()
            if isinstance(val, _End):
                raise BinRPCError(f"BINRPC struct member {v[1]!r} without a value")
            pairs.append((v[1], val))

    out = []
    while pos < len(body):
        v = record()
        if isinstance(v, (_End, tuple)):
            raise BinRPCError("BINRPC body has a stray end mark or name")
        out.append(v)
    return out


def parse_address(address: str) -> tuple[int, Any]:
    """ctl's address forms: tcp:HOST:PORT, unixs:/path (also unix:, a bare path)."""
    kind, sep, rest = address.partition(":")
    if address.startswith("/"):
        return socket.AF_UNIX, address
    if kind in ("unix", "unixs") and sep:
        return socket.AF_UNIX, rest
    if kind == "tcp" and sep:
        host, _, port = rest.rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return socket.AF_INET, (host.strip("[]"), int(port))
    raise RPCError(f"ctl address {address!r} is not tcp:HOST:PORT or unixs:/path",
                   'give the socket of your modparam("ctl", "binrpc", ...), e.g. '
                   "tcp:127.0.0.1:2049 (kamleak speaks BINRPC over stream sockets)")


class BinRPC:
    """`rpc.call("tm.stats")`, `rpc.tm_list()`... over ctl's BINRPC stream socket."""

    def __init__(self, address: str, timeout: float = 5.0, max_reply: int = MAX_REPLY):
        self.address = address
        self.family, self.sockaddr = parse_address(address)
        self.timeout = timeout
        self.max_reply = max_reply
        self.url = f"ctl {address}"
        # One cookie per request, drawn under a lock: the gate's threads (the BYE
        # watcher, the connection probe) share one client.
        self._cookies = itertools.count((os.getpid() << 8) & 0x7FFFFFFF)
        self._lock = threading.Lock()

    def _exchange(self, method: str, packet: bytes, sent: int) -> tuple[int, bytes]:
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as exc:
            raise RPCError(f"cannot open a socket to ctl at {self.address}: {exc.strerror}") from None
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(self.sockaddr)
            except (ConnectionRefusedError, FileNotFoundError):
                raise RPCError(f"Kamailio's ctl at {self.address} refused the connection",
                               'is Kamailio running with loadmodule "ctl.so" and that '
                               'modparam("ctl", "binrpc", ...)?') from None
            except TimeoutError:
                raise RPCError(f"Kamailio's ctl at {self.address} is unreachable (connect timed "
                               "out)", "check the address") from None
            except OSError as exc:
                raise RPCError(f"Kamailio's ctl at {self.address} is unreachable: {exc.strerror}",
                               "check the address") from None
            sock.sendall(packet)
            buf = bytearray()
            hdr = None
            while True:
                if hdr is None:
                    hdr = parse_header(buf)
                if hdr is not None and len(buf) >= hdr[3] + hdr[1]:
                    break
                if hdr is not None and hdr[1] > self.max_reply:
                    raise RPCError(f"ctl {method} reply of {hdr[1]} bytes is larger than kamleak "
                                   f"keeps ({self.max_reply})")
                chunk = sock.recv(1 << 16)
                if not chunk:
                    if not buf:
                        raise RPCError(f"ctl at {self.address} closed the connection without "
                                       f"answering {method}",
                                       "Kamailio's log says why (a reply larger than ctl's "
                                       "buffers is dropped so)")
                    raise BinRPCError(f"ctl at {self.address} closed the connection in the "
                                      f"middle of the {method} reply ({len(buf)} bytes)")
                buf += chunk
        except TimeoutError:
            raise RPCError(f"ctl at {self.address} did not answer {method} within "
                           f"{self.timeout:.0f} s",
                           "is it ctl's BINRPC socket (not SIP, HTTP or a fifo)?") from None
        except BinRPCError as exc:
            raise BinRPCError(f"{self.address} does not speak BINRPC: {exc.cause}",
                              'give the socket of modparam("ctl", "binrpc", ...)') from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            # A Kamailio that exits while kamleak asks it (a config it refuses at start):
            # a failed call the caller can wait past or explain, not a crash of kamleak.
            raise RPCError(f"ctl at {self.address} dropped the connection during {method}: "
                           f"{exc.strerror}", "Kamailio's log says why (did it exit?)") from None
        finally:
            sock.close()
        ptype, tlen, cookie, hlen = hdr
        if cookie != sent:
            raise BinRPCError(f"ctl at {self.address} answered another request (cookie {cookie})")
        return ptype, bytes(buf[hlen:hlen + tlen])

    def call(self, method: str, *params: Any) -> Any:
        with self._lock:
            cookie = next(self._cookies) & 0x7FFFFFFF
        ptype, body = self._exchange(method, encode_request(method, params, cookie), cookie)
        try:
            values = decode_body(body)
        except BinRPCError as exc:
            raise BinRPCError(f"ctl {method} answered malformed BINRPC: {exc.cause}",
                              "see Kamailio's log") from None
        if ptype == FAULT:
            code = values[0] if values and isinstance(values[0], int) else None
            msg = next((v for v in values if isinstance(v, str)), "")
            raise CtlCallError(method, code, msg)
        if ptype != REPL:
            raise BinRPCError(f"ctl at {self.address} answered {method} with a request packet")
        # jsonrpcs answers one value as itself, several as an array: do the same.
        return values[0] if len(values) == 1 else values

    # ---- typed helpers (the same shapes as kamleak.harness.probes.rpc.KamailioRPC) -------

    def core_version(self) -> str:
        return str(_one(self.call("core.version"))).strip()

    def tm_list(self):
        # ctl answers one struct per non-empty bucket as top-level values.
        result = self.call("tm.list")
        if isinstance(result, Pairs):
            result = [result]
        return parse_tm_list(result if result != [] else [])

    def tm_stats(self) -> dict[str, int]:
        return _numbers(_plain(_one(self.call("tm.stats"))))

    def shmmem(self) -> dict[str, int]:
        return _numbers(_plain(_one(self.call("core.shmmem"))))

    def cfg_get(self, group: str, name: str):
        return _plain(_one(self.call("cfg.get", group, name)))

    def ws_dump(self) -> dict:
        return _plain(_one(self.call("ws.dump")))
