"""The agent follows a repository redirect only to the same origin and never sends its
credentials anywhere else: both the TUF fetcher and the artifact downloader, against
real HTTP servers on other ports and another host name."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors

from edgefleet.agent.download import download
from edgefleet.agent.trust import HeaderFetcher
from edgefleet.shared.signing.errors import TransportError

BODY = b"an artifact's bytes " * 100
TOKEN = {"Authorization": "Bearer shared-device-token-0123456789"}


@dataclass
class Server:
    """A real HTTP server: ``routes`` maps a path to a redirect Location; else BODY."""

    httpd: ThreadingHTTPServer
    routes: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _serve() -> Server:
    server: Server

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            server.seen.append((self.path, dict(self.headers)))
            location = server.routes.get(self.path)
            if location is not None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server = Server(httpd)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """The repository, and another origin (another port) that must see nothing."""
    repository, elsewhere = _serve(), _serve()
    yield repository, elsewhere
    repository.httpd.shutdown()
    elsewhere.httpd.shutdown()


def signer(calls: list[tuple[str, str]]) -> Callable[[str, str], dict[str, str]]:
    """A stand-in for the device signature that records each URL it is made for."""

    def auth(method: str, url: str) -> dict[str, str]:
        calls.append((method, url))
        return {"X-Test-Signed-For": url}

    return auth


def fetch_all(fetcher: HeaderFetcher, url: str) -> bytes:
    return b"".join(fetcher.fetch(url))


def get_artifact(url: str, dest: Path, auth: Callable[[str, str], dict[str, str]]) -> None:
    download(
        url,
        dest,
        expected_sha256=hashlib.sha256(BODY).hexdigest(),
        expected_length=len(BODY),
        headers=TOKEN,
        auth=auth,
        timeout_s=5,
    )


def test_a_redirect_to_another_port_is_refused_and_nothing_reaches_it(
    servers: tuple[Server, Server], tmp_path: Path
) -> None:
    repository, elsewhere = servers
    repository.routes["/metadata/timestamp.json"] = elsewhere.url("/steal/timestamp.json")
    repository.routes["/targets/model.efpkg"] = elsewhere.url("/steal/model.efpkg")
    calls: list[tuple[str, str]] = []
    fetcher = HeaderFetcher(TOKEN, auth=signer(calls))

    with pytest.raises(tuf_errors.DownloadError, match="another origin"):
        fetch_all(fetcher, repository.url("/metadata/timestamp.json"))
    with pytest.raises(TransportError, match="another origin"):
        get_artifact(repository.url("/targets/model.efpkg"), tmp_path / "m.efpkg", signer(calls))

    assert elsewhere.seen == []  # not one request: no token, no signature, nothing
    assert [url for _, url in calls] == [
        repository.url("/metadata/timestamp.json"),
        repository.url("/targets/model.efpkg"),
    ]
    assert not (tmp_path / "m.efpkg").exists()


def test_a_redirect_to_another_host_name_on_the_same_port_is_refused(
    servers: tuple[Server, Server], tmp_path: Path
) -> None:
    repository, _ = servers
    # localhost reaches the same server, but it is another origin: a device cannot know
    # that a name it did not configure is the same machine.
    repository.routes["/metadata/timestamp.json"] = repository.url("/x", host="localhost")
    repository.routes["/targets/model.efpkg"] = repository.url("/y", host="localhost")
    with pytest.raises(tuf_errors.DownloadError, match="another origin"):
        fetch_all(HeaderFetcher(TOKEN), repository.url("/metadata/timestamp.json"))
    with pytest.raises(TransportError, match="another origin"):
        get_artifact(repository.url("/targets/model.efpkg"), tmp_path / "m", signer([]))
    assert [path for path, _ in repository.seen] == [
        "/metadata/timestamp.json",
        "/targets/model.efpkg",
    ]


def test_a_redirect_to_another_scheme_is_refused(servers: tuple[Server, Server]) -> None:
    repository, _ = servers
    repository.routes["/metadata/timestamp.json"] = (
        f"https://127.0.0.1:{repository.port}/metadata/timestamp.json"
    )
    with pytest.raises(tuf_errors.DownloadError, match="another origin"):
        fetch_all(HeaderFetcher(TOKEN), repository.url("/metadata/timestamp.json"))


def test_a_same_origin_redirect_is_followed_with_credentials_made_for_the_new_url(
    servers: tuple[Server, Server], tmp_path: Path
) -> None:
    repository, _ = servers
    repository.routes["/metadata/timestamp.json"] = "/moved/timestamp.json"  # relative
    repository.routes["/targets/model.efpkg"] = repository.url("/moved/model.efpkg")
    calls: list[tuple[str, str]] = []

    assert (
        fetch_all(
            HeaderFetcher(TOKEN, auth=signer(calls)), repository.url("/metadata/timestamp.json")
        )
        == BODY
    )
    get_artifact(repository.url("/targets/model.efpkg"), tmp_path / "m.efpkg", signer(calls))

    assert (tmp_path / "m.efpkg").read_bytes() == BODY
    followed = {path: headers for path, headers in repository.seen}
    for path in ("/moved/timestamp.json", "/moved/model.efpkg"):
        assert followed[path]["X-Test-Signed-For"] == repository.url(path)
        assert followed[path]["Authorization"] == TOKEN["Authorization"]
    assert [url for _, url in calls] == [
        repository.url(p)
        for p in (
            "/metadata/timestamp.json",
            "/moved/timestamp.json",
            "/targets/model.efpkg",
            "/moved/model.efpkg",
        )
    ]


def test_a_redirect_loop_ends(servers: tuple[Server, Server], tmp_path: Path) -> None:
    repository, _ = servers
    repository.routes["/a"] = "/b"
    repository.routes["/b"] = "/a"
    with pytest.raises(tuf_errors.DownloadError, match="redirected more than"):
        fetch_all(HeaderFetcher(), repository.url("/a"))
    with pytest.raises(TransportError, match="redirected more than"):
        get_artifact(repository.url("/a"), tmp_path / "m", signer([]))
