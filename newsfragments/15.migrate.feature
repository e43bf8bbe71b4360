`txmail import mbox|maildir|imap` brings a user's mail in through the configured store: mbox files
(flags from Status:, X-Status:, X-Keywords:), Dovecot-layout Maildir trees (keywords, subscriptions,
modified UTF-7 folder names) and any IMAP server (every folder, flags, keywords, internal dates;
resumable, a second run copies only what is new); `txmail export maildir|mbox` writes a user's whole
store as a Dovecot-layout Maildir tree or mbox files.  The admin guide describes migration, and backup
and restore for each backend.
