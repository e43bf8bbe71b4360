A Sieve engine, `txmail.sieve` (RFC 5228, free of Twisted): `parse()` checks a script and reports errors with
their line and column; `run()` gives the actions for one message (keep, fileinto, redirect, discard, reject,
vacation replies and header edits) and falls back to keeping the message on any runtime error or resource
limit. Extensions: fileinto, reject/ereject, envelope, encoded-character, variables, body, relational,
subaddress, copy, imap4flags, vacation and vacation-seconds, date and index, mailbox, include, duplicate and
editheader.
