"""
POP3 (RFC 1939, with RFC 2449 CAPA, RFC 2595 STLS and RFC 5034 SASL AUTH).

* :mod:`txmail.pop3.events` -- what the sans-IO session asks of its application.
* :mod:`txmail.pop3.session` -- the sans-IO server session and the RETR/TOP encoder.
* :mod:`txmail.pop3.server` -- the Twisted adapter and factory.
"""

__all__: list[str] = []
