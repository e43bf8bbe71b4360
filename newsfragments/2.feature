txmail serves mail: `twistd mailserver` receives SMTP for local domains into Maildir (with
UIDs, flags and cached metadata kept in an index beside the messages), offers authenticated
submission (PLAIN, LOGIN, SCRAM-SHA-256) that queues mail for other domains, and `txmail
user|alias|check-config` manages users whose passwords are stored only as SCRAM verifiers.
