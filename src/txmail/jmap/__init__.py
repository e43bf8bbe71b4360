"""
JMAP (RFC 8620 core, RFC 8621 mail) over the mailbox contract.

:mod:`txmail.jmap.core` holds what the API endpoint and the method
implementations share: capability names, method errors, the context a method
is called with and the registry of capabilities and their methods.
"""
