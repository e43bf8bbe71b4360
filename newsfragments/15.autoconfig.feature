Mail clients configure themselves from an address: Thunderbird's autoconfig
(`/.well-known/autoconfig/mail/config-v1.1.xml` and `/mail/config-v1.1.xml` on the
`autoconfig.<domain>` host), Outlook's Autodiscover (POX, `/autodiscover/autodiscover.xml`) and an
Apple configuration profile (`/mail/apple.mobileconfig`, unsigned) are served by the `[web]`
listeners and by new `[autoconfig] listen` listeners that serve only them, for the local domains.
They announce the host name (`[autoconfig] hostname`) and the bound ports of the submission, IMAP
and POP3 listeners that have TLS (implicit TLS preferred; `[autoconfig.ports]` for public ports
behind a mapping), never a plaintext-only one.  `txmail dns-records` also prints the RFC 6186 and
RFC 8314 SRV records (`_submissions`, `_submission`, `_imaps`, `_imap`, `_pop3s`, `_pop3`) and the
`autoconfig.`/`autodiscover.` names.
