"""DCMTK peers for tests: ``storescp`` as a destination, ``storescu`` / ``echoscu`` as senders.

Every process gets ``TCP_NODELAY=1`` (Debian's DCMTK leaves Nagle on otherwise: ~40 ms per
response). A missing program fails the test (``require_tool``), it never skips.

    with storescp(tmp_path / "pacs", ae_title="PACS") as pacs:
        ...  # send to 127.0.0.1:pacs.port
        files = pacs.wait_for_files(1)

    storescu("127.0.0.1", node.port, [folder], called_ae="MEDREGA", calling_ae="CT1")
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port, require_tool

__all__ = [
    "peer_env",
    "wait_for_port",
    "StoreSCP",
    "storescp",
    "storescu",
    "echoscu",
    "write_association_profile",
    "TestPKI",
    "make_test_pki",
]


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a DCMTK/Orthanc process: TCP_NODELAY=1 always."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


def wait_for_port(host: str, port: int, timeout: float = 15.0, process: subprocess.Popen | None = None) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"peer exited with {process.returncode} before listening: {out}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


@dataclass
class StoreSCP:
    """A running DCMTK ``storescp``."""

    port: int
    ae_title: str
    directory: Path
    process: subprocess.Popen
    log: Path
    args: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        """Files completely received so far (storescp writes then renames nothing: skip temp)."""
        return sorted(p for p in self.directory.rglob("*") if p.is_file() and not p.name.startswith("."))

    def wait_for_files(self, count: int, timeout: float = 30.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.files()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"storescp received {len(self.files())} files, expected {count}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def storescp(
    directory: Path,
    *,
    ae_title: str = "STORESCP",
    port: int | None = None,
    profile: tuple[Path, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[StoreSCP]:
    """Run ``storescp`` on ``port`` (a free one by default) writing into ``directory``.

    ``profile`` = (association negotiation config file, profile name) restricts what it accepts
    (``storescp -xf``), e.g. to refuse a SOP class.
    """
    exe = require_tool("storescp")
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [exe, "-aet", ae_title, "-od", str(directory)]
    if profile is not None:
        args += ["-xf", str(profile[0]), profile[1]]
    else:
        args += ["+xa"]  # accept every transfer syntax DCMTK knows
    args += list(extra_args) + [str(port)]
    log = directory.parent / f"storescp-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=peer_env())
    scp = StoreSCP(port=port, ae_title=ae_title, directory=directory, process=proc, log=log, args=args)
    try:
        wait_for_port("127.0.0.1", port, process=proc)
        yield scp
    finally:
        scp.stop()


def write_association_profile(
    path: Path,
    contexts: Sequence[tuple[str, Sequence[str]]],
    name: str = "ONLY",
) -> tuple[Path, str]:
    """A DCMTK association negotiation profile (``asconfig`` format) for ``storescp -xf`` /
    ``storescu -xf``: one presentation context per (SOP Class UID, transfer syntax UIDs).

    For storescp it restricts what is accepted (e.g. to refuse a SOP class); for storescu it makes
    it propose exactly the file's transfer syntax (its ``-x?`` options cover only some).
    Returns ``(path, profile name)``.
    """
    ts_sections: dict[tuple[str, ...], str] = {}
    for _, syntaxes in contexts:
        ts_sections.setdefault(tuple(syntaxes), f"TS{len(ts_sections) + 1}")
    lines = ["[[TransferSyntaxes]]"]
    for syntaxes, key in ts_sections.items():
        lines.append(f"[{key}]")
        lines += [f"TransferSyntax{i + 1} = {uid}" for i, uid in enumerate(syntaxes)]
    lines += ["", "[[PresentationContexts]]", "[PC]"]
    lines += [
        f"PresentationContext{i + 1} = {uid}\\{ts_sections[tuple(syntaxes)]}"
        for i, (uid, syntaxes) in enumerate(contexts)
    ]
    lines += ["", "[[Profiles]]", f"[{name}]", "PresentationContexts = PC", ""]
    path.write_text("\n".join(lines))
    return path, name


def storescu(
    host: str,
    port: int,
    paths: Sequence[Path | str],
    *,
    called_ae: str,
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 300.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Send files or folders (recursively, ``+sd +r``) with ``storescu``; returns the process.

    ``check`` raises when storescu exits non-zero (any refused C-STORE or association makes it do so).
    """
    exe = require_tool("storescu")
    args = [exe, "-aet", calling_ae, "-aec", called_ae, "+sd", "+r", *extra_args, host, str(port)]
    args += [str(p) for p in paths]
    proc = subprocess.run(args, capture_output=True, text=True, env=peer_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"storescu failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    return proc


def echoscu(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``echoscu`` (C-ECHO); exit status 0 means the association and the echo succeeded."""
    exe = require_tool("echoscu")
    args = [exe, "-aet", calling_ae, "-aec", called_ae, *extra_args, host, str(port)]
    return subprocess.run(args, capture_output=True, text=True, env=peer_env(), timeout=timeout)


@dataclass(frozen=True)
class TestPKI:
    """A throw-away CA with a server and a client certificate (PEM files, unencrypted keys)."""

    ca_certificate: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path


def make_test_pki(folder: Path, hostname: str = "localhost") -> TestPKI:
    """Create a CA and two RSA-2048 certificates it signs, with ``openssl`` (valid for 2 days).

    The server certificate names ``hostname`` and 127.0.0.1. Suitable for DCMTK's default
    BCP 195 non-downgrading TLS profile and for Python's ``ssl``.
    """
    exe = require_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([exe, *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=MedRegA test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (folder / "ext.cnf").write_text(f"subjectAltName=DNS:{hostname},IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={hostname if name == 'server' else 'medrega-test-client'}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "ext.cnf")
    return TestPKI(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                   folder / "client.pem", folder / "client.key")
