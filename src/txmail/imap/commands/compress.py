"""
COMPRESS=DEFLATE (RFC 4978): after the tagged OK of ``COMPRESS DEFLATE``
both directions of the connection are raw deflate streams (RFC 1951).

The command only decides; the adapter does the work
(:meth:`txmail.imap.server.IMAPServerProtocol.start_compression`: the
tagged OK goes out uncompressed, then every write batch is deflated and
sync-flushed, and input is inflated in bounded pieces).

* ``COMPRESS`` with another algorithm: ``BAD`` (RFC 4978 section 3:
  "unknown argument").
* A second ``COMPRESS``: ``NO [COMPRESSIONACTIVE]`` (section 3).
* Valid in the authenticated and selected states (section 4,
  ``command-auth``), so never before STARTTLS: compression runs inside
  TLS.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from txmail.imap.commands.context import CommandContext
from txmail.imap.commands.registry import AUTHENTICATED, command
from txmail.imap.responses import Bad, Done, No
from txmail.imap.types import Command, Compress

__all__: list[str] = []


@command("COMPRESS", states=AUTHENTICATED, capability="COMPRESS=DEFLATE")
async def compress(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 4978 section 3."""
    args = cmd.args
    assert isinstance(args, Compress)
    if args.algorithm != "DEFLATE":
        raise Bad("Unknown compression algorithm")
    start = getattr(ctx, "start_compression", None)
    if start is None:
        raise No("Compression is not available here", "CANNOT")
    if not start():
        raise No("Compression is already active", "COMPRESSIONACTIVE")
    return Done("DEFLATE active")
