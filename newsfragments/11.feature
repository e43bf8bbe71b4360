Mail arriving on port 25 is checked (reverse DNS, SPF, DKIM with Ed25519, ARC, DMARC: `p=reject` refused,
`p=quarantine` filed into Junk) and the results written to `Authentication-Results`; `[policy]` adds DNS
blocklists, greylisting and rate limits, with trusted networks exempt. Outgoing mail is DKIM-signed with keys
from `txmail dkim keygen`, forwarded mail gets SRS and an ARC seal, and `txmail dns-records DOMAIN --check`
checks a domain's DNS. DKIM, ARC and DMARC need `pip install 'txmail[policy]'`. Embedders add their own
policy hooks at every SMTP stage with `build_service(settings, policies=[...])`.
