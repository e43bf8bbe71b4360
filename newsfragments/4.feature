`twistd mailserver --imap ENDPOINT` serves IMAP4rev1 (RFC 3501) from the same mailboxes and accounts,
with STARTTLS, AUTHENTICATE and IDLE, UIDPLUS, MOVE, NAMESPACE, ID, UNSELECT, ENABLE, LITERAL+,
SASL-IR, SPECIAL-USE, CHILDREN, LIST-EXTENDED, LIST-STATUS, ESEARCH and APPENDLIMIT; several clients
may have one mailbox open and see each other's changes.
