"""What Kamailio holds, read while it runs: JSON-RPC and BINRPC, counters, shm sites,
WebSocket connections, packet captures and the PBX's SIP trace."""
