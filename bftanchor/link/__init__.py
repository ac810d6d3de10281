"""The node <-> appliance link: framed, authenticated request/reply over a serial line.

frame.py is the wire format and its decoder, messages.py the typed JSON
payloads, transport.py the endpoints (LinkClient on the node, LinkServer on the
appliance), pty.py a pseudo-terminal pair for tests and the devnet. Import each
name from the module that holds it; the package re-exports nothing.
"""
