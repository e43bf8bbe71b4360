"""
Policy: the checks an SMTP server makes on the way in and the
authentication it adds on the way out (SPF, DKIM, DMARC, ARC, SRS, reverse
DNS, blocklists, rate limits, greylisting), and the hooks they are built on.
"""
