Live change: `SIGHUP` (or `txmail reload`, or `MailServer.reload()` for embedders) reloads the
configuration file, the TLS certificate and key on every TLS listener (new handshakes get the renewed
certificate, open sessions keep theirs: a certbot deploy hook can reload), users and aliases, policies
and DKIM keys, without dropping a connection, in the SMTP worker processes too; an invalid file
changes nothing, and a key that cannot change live is logged as "needs a restart".  Stopping is
graceful: no new connections, idle sessions get SMTP 421 4.3.2 / POP3 -ERR / IMAP BYE, a DATA in
progress and the queue runner's deliveries finish, up to the new `[server] shutdown_timeout`
(default 30 s; a second Control-C cuts it short).
