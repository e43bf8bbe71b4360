"""
Authentication: password storage (:mod:`txmail.auth.passwords`), the
sans-IO SASL server shared by SMTP, POP3 and IMAP (:mod:`txmail.auth.sasl`)
and the Twisted glue that checks credentials against a directory
(:mod:`txmail.auth.authenticator`).

This package module imports nothing, so that importing the sans-IO modules
does not pull in Twisted.
"""

__all__ = ["authenticator", "passwords", "sasl"]
