ManageSieve (RFC 5804, `--managesieve tcp:4190` or `[managesieve] listen`): users upload, check, list, activate, fetch,
rename and delete their Sieve scripts from Thunderbird, Roundcube, K-9, `sieve-connect` or `sievelib`, with STARTTLS and
the same SASL logins as IMAP; a script that does not compile is refused with its line and column, and per-user limits
on script size and count apply (`[managesieve] max_script_size`, `max_scripts`). Scripts are kept by every store: the
Maildir store keeps them where Dovecot does (`sieve/NAME.sieve`, the active one linked from `.dovecot.sieve`), so a
Dovecot user's filters are picked up as they are; the PostgreSQL store in a new table (run `txmail db upgrade`).
