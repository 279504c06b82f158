"""Where the NATS server is and how to prove who we are, and the connection's one-line errors.

The URL is `nats://HOST[:PORT]` or `tls://HOST[:PORT]` (several, comma separated, for a cluster).
Credentials come from the URL (`nats://USER:PASSWORD@HOST`, `nats://TOKEN@HOST`), else from
NATS_USER/NATS_PASSWORD or NATS_TOKEN, or from a file (--creds, NATS_CREDS): a credentials
file (a user JWT and its NKey seed, as `nsc` writes them) or a bare NKey seed (SU..., for a
server that lists the user's public NKey); the kind is read from the file. TLS
from `tls://` or --cafile (the server's certificate is verified, always). None of it is ever
logged: `Target.shown` is the URL without its credentials, and it is all a log line names.

nats-py reports a failed first connection as NoServersError whatever the cause; the cause came
through its error callback just before, so connect() keeps the last one and says it: a refused
or unreachable server (ExitCode.CONNECT), credentials the server refused (ExitCode.AUTH), a
certificate that did not verify (ExitCode.TLS). A TLS error ends the first connection at once:
no retry changes a certificate, and nats-py, after a failed TLS upgrade, waits forever for the
old transport to close (tests/jetstream/test_tls.py pins it). The whole first connection is
bounded in time too, whatever nats-py does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from tb.exitcode import ExitCode
from tb.jetstream import NATS_MISSING, JetStreamError

__all__ = ["Target", "parse_target", "connect"]

log = logging.getLogger("tb.nats")


class _SslEofNotice(logging.Filter):
    """asyncio warns at every close of a TLS connection nats-py made ("returning true from
    eof_received() has no effect when using ssl"): noise, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


_SSL_EOF_NOTICE = _SslEofNotice()

DEFAULT_PORT = 4222


@dataclass(slots=True)
class Target:
    """The servers to try, the credentials, and the URL as logs may show it."""

    servers: list[str]
    shown: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds: str | None = None  # a credentials file: user JWT and NKey seed
    nkey: str | None = None  # a file holding a bare NKey seed
    tls: ssl.SSLContext | None = None


def _split(url: str) -> tuple[str, str, str | None, str | None]:
    """(scheme, host:port, user, password) of one server URL; JetStreamError if malformed."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.scheme not in ("nats", "tls"):
        raise JetStreamError(
            f"NATS URL must start with nats:// or tls://, not {parts.scheme}://", ExitCode.USAGE
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise JetStreamError("the NATS URL has a bad port", ExitCode.USAGE) from None
    if not parts.hostname or parts.path not in ("", "/"):
        raise JetStreamError(
            "a NATS URL is nats://HOST[:PORT] or tls://HOST[:PORT]", ExitCode.USAGE
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.scheme, f"{host}:{port}", user, password


def parse_target(
    url: str, *, creds: str | None = None, cafile: str | None = None, env=os.environ
) -> Target:
    """The Target for `url` (comma-separated for several servers), credentials from the URL, else
    the environment, else `creds`; JetStreamError(USAGE) for a malformed URL or unreadable file."""
    schemes, hosts, user, password = set(), [], None, None
    for one in url.split(","):
        scheme, hostport, u, p = _split(one.strip())
        schemes.add(scheme)
        hosts.append(hostport)
        user, password = user or u, password if password is not None else p
    target = Target(servers=[], shown="")
    if user is not None and password is None:
        target.token = user  # nats://TOKEN@HOST
    elif user is not None:
        target.user, target.password = user, password
    elif env.get("NATS_TOKEN"):
        target.token = env["NATS_TOKEN"]
    elif env.get("NATS_USER"):
        target.user, target.password = env["NATS_USER"], env.get("NATS_PASSWORD", "")
    creds = creds or env.get("NATS_CREDS") or None
    if creds is not None:
        if _is_jwt_creds(creds):
            target.creds = creds
        else:
            target.nkey = creds
    if "tls" in schemes or cafile:
        try:
            target.tls = ssl.create_default_context(cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise JetStreamError(f"cannot use --cafile {cafile}: {why}", ExitCode.USAGE) from None
    scheme = "tls" if target.tls is not None else "nats"
    target.servers = [f"{scheme}://{h}" for h in hosts]
    target.shown = ",".join(target.servers)
    return target


def _is_jwt_creds(path: str) -> bool:
    """True for a credentials file (a user JWT and its seed), False for a bare NKey seed;
    JetStreamError(USAGE) for anything else (never saying what the file holds)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise JetStreamError(
            f"cannot read the credentials file {path}: {exc.strerror}", ExitCode.USAGE
        ) from None
    if b"BEGIN NATS USER JWT" in head and b"BEGIN USER NKEY SEED" in head:
        return True
    words = head.split()
    if len(words) == 1 and words[0].startswith(b"SU"):
        return False
    raise JetStreamError(
        f"{path} is not a NATS credentials file (a user JWT and its NKey seed, as nsc writes"
        " them) nor a bare user NKey seed (SU...)",
        ExitCode.USAGE,
    )


def _describe(errors: list[BaseException], target: Target) -> JetStreamError:
    """The one line (and exit code) for a first connection that failed with `errors`."""
    exc = errors[-1] if errors else None
    text = str(exc) if exc is not None else "no server answered"
    if type(exc).__module__.startswith("nkeys"):  # (nats-py read the seed: it is not one)
        return JetStreamError(
            f"the NKey seed in {target.creds or target.nkey} is not valid", ExitCode.USAGE
        )
    if any("authorization" in str(e).lower() for e in errors):
        how = (
            "the credentials file"
            if target.creds
            else "the NKey seed"
            if target.nkey
            else "the token"
            if target.token
            else "the user and password"
            if target.user
            else "no credentials"
        )
        return JetStreamError(
            f"NATS at {target.shown} refused the connection: authorization failed "
            f"(tried {how}; credentials come from the URL, NATS_USER/NATS_PASSWORD, NATS_TOKEN "
            "or --creds)",
            ExitCode.AUTH,
        )
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or str(exc)
        hint = (
            " (is --cafile the CA that signed the server's certificate?)"
            if reason == "CERTIFICATE_VERIFY_FAILED"
            else ""
        )
        return JetStreamError(f"TLS to NATS at {target.shown} failed: {reason}{hint}", ExitCode.TLS)
    if isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno).lower()
    elif not text or text.startswith("nats: "):
        text = text.removeprefix("nats: ") or type(exc).__name__
    return JetStreamError(f"cannot reach NATS at {target.shown}: {text}", ExitCode.CONNECT)


async def connect(
    target: Target,
    *,
    name: str,
    on_disconnected: Callable[[], Awaitable[None]] | None = None,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 2.0,
):
    """Connect (two tries per server), then reconnect forever; JetStreamError if the first fails.

    Connection trouble after that is said once per disconnect and reconnect, never as a
    traceback."""
    try:
        import nats
    except ImportError:
        raise JetStreamError(NATS_MISSING, ExitCode.USAGE) from None
    last: list[BaseException] = []
    connected = False
    nc = None
    tls_failed = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        last.append(exc)
        if connected:
            log.warning("NATS: %s", exc)
        elif isinstance(exc, ssl.SSLError):
            tls_failed.set()

    async def on_disconnect() -> None:
        if connected and not nc.is_closed:
            log.warning("NATS at %s: disconnected; reconnecting", target.shown)
        if on_disconnected is not None:
            await on_disconnected()

    async def on_reconnect() -> None:
        log.info("NATS: reconnected to %s", target.shown)
        if on_reconnected is not None:
            await on_reconnected()

    options = dict(
        servers=target.servers,
        name=name,
        connect_timeout=connect_timeout,
        reconnect_time_wait=0.25,
        max_reconnect_attempts=1,  # the first connection: two tries per server, then say why
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 << 20,
    )
    if target.user is not None:
        options.update(user=target.user, password=target.password)
    if target.token is not None:
        options["token"] = target.token
    if target.creds is not None or target.nkey is not None:
        try:
            import nkeys  # noqa: F401  (nats-py signs the server's nonce with it)
        except ImportError:
            raise JetStreamError(
                "--creds needs the nkeys package: pip install 'tb[nats]'", ExitCode.USAGE
            ) from None
    if target.creds is not None:
        options["user_credentials"] = target.creds
    if target.nkey is not None:
        options["nkeys_seed"] = target.nkey
    if target.tls is not None:
        options["tls"] = target.tls
    logging.getLogger("asyncio").addFilter(_SSL_EOF_NOTICE)  # (once: a filter is a set member)
    # two tries per server, each up to three steps of connect_timeout (INFO, TLS, PONG)
    budget = len(target.servers) * 2 * (3 * connect_timeout + 0.25) + 1.0
    attempt = asyncio.ensure_future(nats.connect(**options))
    tls_wait = asyncio.ensure_future(tls_failed.wait())
    done, _ = await asyncio.wait(
        {attempt, tls_wait}, timeout=budget, return_when=asyncio.FIRST_COMPLETED
    )
    tls_wait.cancel()
    if attempt not in done:
        attempt.cancel()
        await asyncio.wait({attempt}, timeout=1.0)
        raise _describe(last or [TimeoutError(f"no answer within {budget:.0f} s")], target)
    try:
        nc = attempt.result()
    except Exception as exc:  # noqa: BLE001 -- nats-py raises many kinds; each is one line here
        raise _describe(last or [exc], target) from None
    connected = True
    nc.options["max_reconnect_attempts"] = -1  # from now on: reconnect forever
    return nc
