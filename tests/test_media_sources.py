"""Where media may come from: the address guard, the pinned http fetcher (through httpx's
MockTransport, so nothing leaves the process), local files under the allowed directory."""

from __future__ import annotations

import httpx
import pytest

from mlx_server.api.errors import ApiError
from mlx_server.api.media.fetch import HttpFetcher
from mlx_server.api.media.localfile import local_path, read_local
from mlx_server.api.media.netguard import non_public_reason
from mlx_server.api.media.refs import MediaRef, source_of
from mlx_server.engine.errors import InvalidRequestError

P = "messages[0].content[1].image_url"


@pytest.mark.parametrize(
    "address,reason",
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),  # AWS metadata over IPv6
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", ("reserved", "private")),  # Python >= 3.11.4 calls it private too
        ("100.100.100.200", "non-public"),  # shared address space (Alibaba metadata)
        ("::ffff:127.0.0.1", "loopback (as ::ffff:7f00:1)"),
        ("::ffff:10.0.0.1", "private (as ::ffff:a00:1)"),
        ("64:ff9b::a9fe:a9fe", "link-local (as 64:ff9b::a9fe:a9fe)"),
        ("2002:7f00:1::", "loopback (as 2002:7f00:1::)"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_classes(address, reason):
    if isinstance(reason, tuple):
        assert non_public_reason(address) in reason
    else:
        assert non_public_reason(address) == reason


class Recorder:
    """A MockTransport handler: routes by (pinned address, Host header[, path]), records
    requests."""

    def __init__(self, routes: dict[tuple[str, str], httpx.Response]):
        self.routes = routes
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        key = (request.url.host, request.headers["host"])
        by_path = self.routes.get((*key, request.url.path))
        return by_path or self.routes.get(key, httpx.Response(404))


DNS = {
    "cdn.example": ["93.184.216.34"],
    "internal.example": ["10.0.0.7"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],
}


async def table_resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError("Name or service not known")
    return DNS[host]


def fetcher(routes, allow_private=False) -> tuple[HttpFetcher, Recorder]:
    rec = Recorder(routes)
    f = HttpFetcher(
        resolver=table_resolver, transport=httpx.MockTransport(rec), allow_private=allow_private
    )
    return f, rec


pytestmark = pytest.mark.anyio


async def test_fetch_goes_to_the_checked_address_with_the_original_host():
    f, rec = fetcher({("93.184.216.34", "cdn.example"): httpx.Response(200, content=b"PIXELS")})
    assert await f.fetch("https://cdn.example/cat.png?x=1", P, 100) == b"PIXELS"
    (req,) = rec.seen
    assert req.url.host == "93.184.216.34" and req.url.path == "/cat.png"
    assert req.url.query == b"x=1" and req.url.scheme == "https"
    assert req.headers["host"] == "cdn.example"
    assert req.extensions["sni_hostname"] == "cdn.example"  # TLS checks the name, not the IP


@pytest.mark.parametrize(
    "url", ["http://internal.example/a.png", "http://mixed.example/a.png", "http://[::1]:8080/x"]
)
async def test_non_public_targets_are_refused_without_a_request(url):
    f, rec = fetcher({})
    with pytest.raises(ApiError) as info:
        await f.fetch(url, P, 100)
    assert info.value.status == 403 and info.value.param == P
    assert (
        info.value.code == "private_media_url"
        and "--allow-private-media-urls" in info.value.message
    )
    assert rec.seen == []


async def test_a_redirect_to_a_private_address_is_refused_before_following_it():
    moved = httpx.Response(302, headers={"location": "http://internal.example/secret"})
    f, rec = fetcher({("93.184.216.34", "cdn.example"): moved})
    with pytest.raises(ApiError) as info:
        await f.fetch("http://cdn.example/a.png", P, 100)
    assert info.value.status == 403 and "internal.example" in info.value.message
    assert len(rec.seen) == 1


async def test_redirects_are_followed_and_checked_each_hop():
    routes = {
        ("93.184.216.34", "cdn.example", "/a.png"): httpx.Response(
            301, headers={"location": "/b.png"}
        ),
    }
    f, rec = fetcher(routes)
    with pytest.raises(InvalidRequestError, match="HTTP 404"):  # /b.png is not routed
        await f.fetch("http://cdn.example/a.png", P, 100)
    assert [r.url.path for r in rec.seen] == ["/a.png", "/b.png"]
    loop = {("93.184.216.34", "cdn.example"): httpx.Response(302, headers={"location": "/a"})}
    f, rec = fetcher(loop)
    with pytest.raises(InvalidRequestError, match="redirects"):
        await f.fetch("http://cdn.example/a", P, 100)
    assert len(rec.seen) == 6


async def test_private_targets_are_fetched_when_allowed():
    f, rec = fetcher({("10.0.0.7", "internal.example"): httpx.Response(200, content=b"ok")}, True)
    assert await f.fetch("http://internal.example/a.png", P, 100) == b"ok"


@pytest.mark.parametrize(
    "response,needle",
    [
        (httpx.Response(404), "HTTP 404"),
        (httpx.Response(500), "HTTP 500"),
        (httpx.Response(200, content=b"x" * 101), "limit"),
        (httpx.Response(200, headers={"content-length": "5000"}, content=b"x" * 5000), "limit"),
    ],
)
async def test_http_failures_are_400s_naming_the_url(response, needle):
    f, _ = fetcher({("93.184.216.34", "cdn.example"): response})
    with pytest.raises(InvalidRequestError) as info:
        await f.fetch("http://cdn.example/a.png", P, 100)
    assert needle in info.value.message and "http://cdn.example/a.png" in info.value.message
    assert info.value.param == P


@pytest.mark.parametrize(
    "url,needle",
    [("http://nowhere.example/a", "does not resolve"), ("http:///nohost", "with a host")],
)
async def test_bad_hosts_are_400s(url, needle):
    f, rec = fetcher({})
    with pytest.raises(InvalidRequestError, match=needle):
        await f.fetch(url, P, 100)
    assert rec.seen == []


@pytest.mark.parametrize(
    "url,source",
    [
        ("data:image/png;base64,AA==", "data"),
        ("HTTPS://x.example/a", "http"),
        ("http://x", "http"),
        ("file:///tmp/a.png", "file"),
        ("/tmp/a.png", "file"),
        ("a.png", "file"),
    ],
)
def test_sources(url, source):
    assert source_of(MediaRef("messages[0].content[0]", "image", url)) == source


def test_other_schemes_are_400s_naming_the_part():
    with pytest.raises(InvalidRequestError) as info:
        source_of(MediaRef("messages[0].content[0]", "video", "ftp://x/a.mp4"))
    assert info.value.param == "messages[0].content[0].video_url"
    assert info.value.code == "invalid_video_url"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"inside")
    (tmp_path / "secret.png").write_bytes(b"outside")
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    (root / "inner.png").symlink_to(root / "sub" / "a.png")
    return root


@pytest.mark.parametrize(
    "spec",
    ["sub/a.png", "{root}/sub/a.png", "file://{root}/sub/a.png", "inner.png", "sub/../sub/a.png"],
)
def test_local_files_under_the_allowed_directory(tree, spec):
    path = local_path(spec.format(root=tree), str(tree), "image", P)
    assert read_local(path, "image", P, 100) == b"inside"


@pytest.mark.parametrize(
    "spec",
    [
        "escape.png",
        "../secret.png",
        "sub/../../secret.png",
        "{root}/../secret.png",
        "/etc/passwd",
        "file:///etc/passwd",
        "file://{root}/%2e%2e/secret.png",
    ],
)
def test_local_files_outside_the_allowed_directory_are_403s(tree, spec):
    with pytest.raises(ApiError) as info:
        local_path(spec.format(root=tree), str(tree), "image", P)
    assert info.value.status == 403 and info.value.code == "local_media_forbidden"
    assert info.value.param == P and "outside the directory" in info.value.message


def test_local_files_are_off_by_default_and_missing_ones_are_400s(tree):
    with pytest.raises(ApiError) as info:
        local_path(str(tree / "sub" / "a.png"), None, "image", P)
    assert info.value.status == 403 and "--allowed-local-media-path" in info.value.message
    with pytest.raises(InvalidRequestError, match="no such"):
        local_path("sub/missing.png", str(tree), "image", P)
    with pytest.raises(InvalidRequestError, match="file: URLs must name a local file"):
        local_path("file://server/share/a.png", str(tree), "image", P)
    with pytest.raises(InvalidRequestError, match="limit"):
        read_local(local_path("sub/a.png", str(tree), "image", P), "image", P, 3)


@pytest.fixture
def tls_server(tmp_path):
    """An https server on 127.0.0.1 with a self-signed certificate for `media.test` only."""
    import datetime
    import http.server
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "media.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("media.test")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.headers["Host"], self.path))
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"HELLO")

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    client_context = ssl.create_default_context(cadata=cert_pem.decode())
    yield srv.server_address[1], client_context, seen
    srv.shutdown()
    srv.server_close()


async def test_https_to_the_pinned_address_verifies_the_host_name(tls_server):
    port, trust, seen = tls_server

    async def resolve(host, _port):
        return {"media.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}[host]

    f = HttpFetcher(resolver=resolve, allow_private=True, verify=trust)
    try:
        assert await f.fetch(f"https://media.test:{port}/a.png", P, 100) == b"HELLO"
        assert seen == [(f"media.test:{port}", "/a.png")]
        # Same address, a name the certificate does not cover: the TLS check fails.
        with pytest.raises(InvalidRequestError, match="other.test"):
            await f.fetch(f"https://other.test:{port}/a.png", P, 100)
        assert len(seen) == 1
    finally:
        await f.aclose()
