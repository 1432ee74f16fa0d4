"""http(s) media fetched with a time limit, a byte limit and the SSRF guard.

Each hop's host is resolved once, every address it resolves to is checked, and the request is
sent to a checked address with the original Host header and TLS server name, so a DNS answer
that changes between the check and the connection (rebinding) cannot redirect the fetch.
Redirects are followed by hand, each new location checked the same way.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import httpx

from .errors import forbidden, invalid, mib, show_url
from .netguard import Resolver, literal_address, non_public_reason, system_resolver

log = logging.getLogger("mlx_server.api")

MAX_REDIRECTS = 5
MAX_ADDRESSES = 3  # tried in order when a connection is refused
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HttpFetcher:
    """Fetches media for requests. One per app; `aclose()` at shutdown."""

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        allow_private: bool = False,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ):
        self.timeout = timeout
        self.allow_private = allow_private
        self._resolve = resolver
        self._transport = transport
        self._verify = verify
        self._client_instance: httpx.AsyncClient | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        # Made on first use: building its TLS context costs ~25 ms, and most apps never fetch.
        if self._client_instance is None:
            # No proxies from the environment (they would bypass the address checks) and no
            # kept-alive connections (one pinned to an address must not serve another host).
            self._client_instance = httpx.AsyncClient(
                transport=self._transport,
                verify=self._verify,
                trust_env=False,
                follow_redirects=False,
                timeout=self.timeout,
                limits=httpx.Limits(max_keepalive_connections=0),
                headers={
                    "User-Agent": "mlx-server",
                    "Accept": "image/*, video/*;q=0.9, */*;q=0.5",
                },
            )
        return self._client_instance

    async def aclose(self) -> None:
        if self._client_instance is not None:
            await self._client_instance.aclose()
            self._client_instance = None

    async def fetch(self, url: str, param: str, max_bytes: int) -> bytes:
        """The body at `url` (following redirects). Raises a 403 for a non-public address
        and a 400 naming the URL for any other failure: bad URL, connection refused, timeout,
        an HTTP error status, a body over `max_bytes`."""
        try:
            return await asyncio.wait_for(self._fetch(url, param, max_bytes), self.timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise invalid(
                f"fetching {show_url(url)} timed out after {self.timeout:g} s",
                param,
                "media_fetch_failed",
            ) from None

    async def _fetch(self, url: str, param: str, max_bytes: int) -> bytes:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            target = self._parse(current, param)
            addresses = await self._addresses(target, param)
            status, location, body = await self._get(target, addresses, param, max_bytes)
            if status in _REDIRECTS and location:
                current = str(target.join(location))
                continue
            if status != 200:
                raise invalid(
                    f"fetching {show_url(current)} failed: HTTP {status}",
                    param,
                    "media_fetch_failed",
                )
            return body
        raise invalid(
            f"fetching {show_url(url)} took more than {MAX_REDIRECTS} redirects",
            param,
            "media_fetch_failed",
        )

    @staticmethod
    def _parse(url: str, param: str) -> httpx.URL:
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise invalid(
                f"invalid URL {show_url(url)}: {exc}", param, "invalid_media_url"
            ) from None
        if target.scheme not in ("http", "https") or not target.host:
            raise invalid(
                f"cannot fetch {show_url(url)}: only http and https URLs with a host are fetched",
                param,
                "invalid_media_url",
            )
        return target

    async def _addresses(self, target: httpx.URL, param: str) -> list[str]:
        host, port = target.host, target.port or (443 if target.scheme == "https" else 80)
        literal = literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = await self._resolve(host, port)
            except OSError as exc:
                raise invalid(
                    f"cannot fetch {show_url(str(target))}: the host {host!r} does not resolve "
                    f"({exc})",
                    param,
                    "media_fetch_failed",
                ) from None
        if not addresses:
            raise invalid(f"the host {host!r} has no address", param, "media_fetch_failed")
        if not self.allow_private:
            for address in addresses:
                reason = non_public_reason(address)
                if reason is not None:
                    raise forbidden(
                        f"refusing to fetch {show_url(str(target))}: {host} is a {reason} "
                        f"address ({address}); this server only fetches media from public "
                        "addresses (start it with --allow-private-media-urls to allow others)",
                        param,
                        "private_media_url",
                    )
        return addresses[:MAX_ADDRESSES]

    async def _get(
        self, target: httpx.URL, addresses: list[str], param: str, max_bytes: int
    ) -> tuple[int, str | None, bytes]:
        """One GET sent to the first checked address that accepts a connection."""
        headers = {"Host": target.netloc.decode("ascii")}
        extensions = {}
        if target.scheme == "https" and literal_address(target.host) is None:
            extensions["sni_hostname"] = target.host  # and the certificate is checked for it
        last: Exception | None = None
        for address in addresses:
            pinned = target.copy_with(host=address)
            try:
                return await self._send(pinned, headers, extensions, str(target), param, max_bytes)
            except httpx.ConnectError as exc:
                last = exc
                log.info("media fetch: %s via %s: %s", target.host, address, exc)
        raise invalid(
            f"fetching {show_url(str(target))} failed: could not connect ({last})",
            param,
            "media_fetch_failed",
        )

    async def _send(
        self,
        pinned: httpx.URL,
        headers: dict,
        extensions: dict,
        shown: str,
        param: str,
        max_bytes: int,
    ) -> tuple[int, str | None, bytes]:
        request = self._client.build_request("GET", pinned, headers=headers, extensions=extensions)
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.TimeoutException):
            raise  # the caller tries the next address / reports the timeout
        except httpx.HTTPError as exc:
            raise invalid(
                f"fetching {show_url(shown)} failed: {exc}", param, "media_fetch_failed"
            ) from None
        try:
            if response.status_code != 200:
                return response.status_code, response.headers.get("location"), b""
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise self._too_big(shown, param, max_bytes)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise self._too_big(shown, param, max_bytes)
            return 200, None, bytes(body)
        except httpx.HTTPError as exc:
            if isinstance(exc, httpx.TimeoutException):
                raise
            raise invalid(
                f"fetching {show_url(shown)} failed: {exc}", param, "media_fetch_failed"
            ) from None
        finally:
            await response.aclose()

    @staticmethod
    def _too_big(shown: str, param: str, max_bytes: int):
        return invalid(
            f"the media at {show_url(shown)} is larger than this server's limit of "
            f"{mib(max_bytes)}",
            param,
            "media_too_large",
        )
