"""
The server's own policies, assembled from the configuration
(:class:`txmail.policy.config.PolicyConfig`), in the order they are asked:

1. :class:`~txmail.policy.limits.RateLimits` (both roles): connection
   counts, message and recipient rates, address harvesting;
2. :class:`~txmail.policy.dnsbl.DNSBL` (MTA role, when lists are
   configured): allowlists, client and sender-domain blocklists;
3. :class:`~txmail.policy.greylist.Greylisting` (MTA role, when on for the
   defaults or for any domain);
4. :class:`~txmail.policy.authentication.InboundAuthentication` (MTA role):
   SPF, DKIM, ARC, DMARC;
5. :class:`~txmail.policy.authentication.DKIMSigner` (when keys are
   configured);
6. the embedder's own policies (``build_service(policies=...)``);
7. :class:`~txmail.policy.authentication.AuthenticationResultsHeader`,
   last, so that it records every result.

``[policy] enabled = false`` leaves out 2-4 (the inbound checks); the
limits, signing and the removal of forged ``Authentication-Results`` stay.

DKIM, ARC and DMARC need the ``policy`` extra (dkimpy, PyNaCl,
publicsuffixlist).  Without it those checks are left out with a warning
in the log; configured signing keys are then an error, since mail would go
out unsigned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger

from txmail.errors import ConfigError
from txmail.policy.authentication import AuthenticationResultsHeader, DKIMSigner, InboundAuthentication
from txmail.policy.config import PolicyConfig

__all__ = ["build_forwarding", "build_policies", "policy_extra_available", "signing_keys"]

log = Logger()


def policy_extra_available() -> str | None:
    """``None`` when the ``policy`` extra is installed, else what is missing."""
    try:
        import dkim  # noqa: F401
        import nacl  # noqa: F401
        import publicsuffixlist  # noqa: F401
    except ImportError as e:
        return f"{e.name or 'a module'} is not installed (pip install 'txmail[policy]')"
    return None


def signing_keys(config: PolicyConfig) -> list[Any]:
    """
    The :class:`~txmail.policy.dkim.SigningKey` of every ``[[dkim.keys]]``
    entry that signs (none when ``[dkim] sign = false``).

    Raises:
        ConfigError: the policy extra is missing, or a key file cannot be read.
    """
    entries = [k for k in config.dkim_keys if k.sign] if config.dkim_sign else []
    if not entries:
        return []
    missing = policy_extra_available()
    if missing is not None:
        raise ConfigError(f"DKIM signing keys are configured but {missing}")
    from txmail.policy.dkim import load_signing_key

    keys = []
    for entry in entries:
        try:
            keys.append(load_signing_key(entry.key, entry.domain, entry.selector))
        except OSError as e:
            raise ConfigError(f"dkim key {entry.key!r}: {e.strerror or e}") from None
        except ValueError as e:
            raise ConfigError(f"dkim key {entry.key!r}: {e}") from None
    return keys


def build_policies(
    config: PolicyConfig,
    *,
    hostname: str,
    resolver: Any,
    run_blocking: Callable[..., Any],
    clock: Any,
    greylist_path: str | None = None,
    extra: Sequence[Any] = (),
    keys: Sequence[Any] | None = None,
    filters: Sequence[Any] = (),
) -> list[Any]:
    """
    The policies for *config*, in order (see the module notes), with the
    content *filters* (milters, rspamd) after the inbound checks and before
    DKIM signing, and the embedder's *extra* policies before the
    Authentication-Results field.
    *keys* are the DKIM signing keys when the caller loaded them already
    (:func:`signing_keys`).

    Raises:
        ConfigError: a signing key cannot be loaded.
    """
    from txmail.policy.limits import RateLimits

    policies: list[Any] = [RateLimits(config.limits, clock=clock)]
    if config.enabled:
        if config.dnsbl or config.dnswl or config.domain_blocklists:
            from txmail.policy.dnsbl import DNSBL

            policies.append(
                DNSBL(
                    resolver=resolver,
                    blocklists=config.dnsbl,
                    allowlists=config.dnswl,
                    domain_blocklists=config.domain_blocklists,
                )
            )
        if config.defaults.greylisting or any(d.greylisting for _, d in config.domains):
            from txmail.policy.greylist import Greylisting

            policies.append(Greylisting(config, clock=clock, path=greylist_path))
        inbound = config
        missing = policy_extra_available()
        if missing is not None and (config.dkim or config.arc or config.dmarc):
            log.warn("DKIM, ARC and DMARC checks are off: {missing}", missing=missing)
            from dataclasses import replace

            inbound = replace(config, dkim=False, arc=False, dmarc=False)
        if inbound.spf or inbound.dkim or inbound.arc or inbound.dmarc:
            policies.append(
                InboundAuthentication(
                    inbound, resolver=resolver, run_blocking=run_blocking, hostname=hostname
                )
            )
    policies.extend(filters)
    if keys is None:
        keys = signing_keys(config)
    if keys:
        policies.append(DKIMSigner(keys, run_blocking=run_blocking, clock=clock))
    policies.extend(extra)
    policies.append(AuthenticationResultsHeader(config.authserv_id or hostname))
    return policies


def build_forwarding(
    config: PolicyConfig,
    *,
    keys: Sequence[Any],
    primary_domain: str,
    authserv_id: str,
    is_local: Callable[[str], bool],
    run_blocking: Callable[..., Any],
    clock: Any,
) -> Any:
    """
    The :class:`~txmail.delivery.forward.Forwarding` of *config* (``[srs]``
    and ``[arc]``), or ``None`` when neither is on.  The ARC key is
    ``[arc]``'s, else the first RSA signing key (RFC 8617 has no Ed25519).

    Raises:
        ConfigError: the ARC key cannot be loaded or is not RSA.
    """
    from txmail.delivery.forward import Forwarding

    srs = None
    if config.srs.enabled:
        from txmail.policy.srs import SRS

        srs = SRS(
            [s.encode("utf-8") for s in config.srs.secrets],
            config.srs.domain or primary_domain,
            max_age_days=max(1, int(config.srs.max_age // 86400)),
        )
    seal_key = None
    arc = config.arc_seal
    if arc.seal and arc.key is not None and arc.domain is not None and arc.selector is not None:
        missing = policy_extra_available()
        if missing is not None:
            raise ConfigError(f"[arc] sealing is configured but {missing}")
        from txmail.policy.dkim import load_signing_key

        try:
            seal_key = load_signing_key(arc.key, arc.domain, arc.selector)
        except (OSError, ValueError) as e:
            raise ConfigError(f"arc key {arc.key!r}: {e}") from None
        if seal_key.algorithm != "rsa-sha256":
            raise ConfigError(f"arc key {arc.key!r} must be an RSA key (RFC 8617 seals with rsa-sha256)")
    elif arc.seal:
        seal_key = next((k for k in keys if k.algorithm == "rsa-sha256"), None)
    if srs is None and seal_key is None:
        return None
    return Forwarding(
        srs=srs,
        seal_key=seal_key,
        authserv_id=authserv_id,
        is_local=is_local,
        run_blocking=run_blocking,
        clock=clock,
    )
