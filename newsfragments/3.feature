`twistd mailserver --pop3 ENDPOINT` serves POP3 (RFC 1939 with CAPA, STLS and SASL AUTH) from the
same mailboxes and accounts as SMTP delivery; messages a POP3 client deletes are gone for IMAP
too.
