"""
ManageSieve (RFC 5804): the protocol clients (Thunderbird's sieve add-on,
Roundcube, K-9, sieve-connect) use to upload, list, activate and fetch a
user's Sieve scripts, kept by the user's store through
:class:`txmail.interfaces.ISieveScripts`.

* :mod:`txmail.managesieve.grammar`: the wire syntax (strings, literals,
  responses), sans-IO;
* :mod:`txmail.managesieve.session`: the session state machine, sans-IO;
* :mod:`txmail.managesieve.events`: what the session asks its application;
* :mod:`txmail.managesieve.server`: the Twisted protocol and factory.
"""

__all__: list[str] = []
