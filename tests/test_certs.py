"""fedcore.certs: the issued chain verifies, identities bind, keys are private, and a real
gRPC mutual-TLS handshake on loopback admits exactly our enrolled clients."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    DNSName,
    IPAddress,
    PolicyBuilder,
    Store,
    VerificationError,
)

from fedcore import certs
from fedcore.certs import CertError

SERVER_NAMES = ["localhost", "127.0.0.1", "::1"]
CLIENTS = ["alice", "bob"]


@dataclass(frozen=True)
class Pki:
    """A certificate directory made by `fedcore certs init`, with its CA loaded."""

    root: Path
    ca: certs.Identity
    server: certs.Identity

    def client(self, client_id: str) -> certs.Identity:
        """The identity of one of this directory's clients."""
        return certs.load_identity(certs.client_cert_path(self.root, client_id))


def _init(root: Path, *extra: str) -> int:
    """Run `fedcore certs init` for SERVER_NAMES and CLIENTS into `root`."""
    argv = ["init", "--dir", str(root)]
    for name in SERVER_NAMES:
        argv += ["--server-name", name]
    for client_id in CLIENTS:
        argv += ["--client", client_id]
    return certs.certs_main([*argv, *extra])


def _make_pki(root: Path) -> Pki:
    """A fresh certificate directory made through the CLI."""
    assert _init(root) == 0
    return Pki(
        root,
        certs.load_identity(root / certs.CA_CERT),
        certs.load_identity(certs.server_dir(root) / certs.SERVER_CERT),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Our deployment's certificates."""
    return _make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another deployment's certificates: same names and ids, a different CA."""
    return _make_pki(tmp_path_factory.mktemp("other"))


def _builder(pki: Pki) -> PolicyBuilder:
    """A verification policy that trusts only `pki`'s CA."""
    return PolicyBuilder().store(Store([pki.ca.cert]))


# --- the certificates themselves -------------------------------------------------------------


def test_layout_and_enrolment(pki: Pki) -> None:
    files = {str(p.relative_to(pki.root)) for p in pki.root.rglob("*") if p.is_file()}
    assert files == {
        "ca.pem",
        "ca.key",
        "server/ca.pem",
        "server/server.pem",
        "server/server.key",
        "server/enrolled.txt",
        "clients/alice.pem",
        "clients/alice.key",
        "clients/bob.pem",
        "clients/bob.key",
    }
    assert (pki.root / "server" / "enrolled.txt").read_text() == "alice\nbob\n"
    assert certs.enrolled_clients(pki.root / "server") == CLIENTS
    assert (pki.root / "server" / "ca.pem").read_bytes() == (pki.root / "ca.pem").read_bytes()


@pytest.mark.parametrize(
    "subject",
    [
        DNSName("localhost"),
        IPAddress(ipaddress.ip_address("127.0.0.1")),
        IPAddress(ipaddress.ip_address("::1")),
    ],
)
def test_server_chain_verifies_for_each_name(pki: Pki, subject: DNSName | IPAddress) -> None:
    chain = _builder(pki).build_server_verifier(subject).verify(pki.server.cert, [])
    assert chain == [pki.server.cert, pki.ca.cert]


def test_server_chain_rejects_a_name_not_in_its_sans(pki: Pki) -> None:
    verifier = _builder(pki).build_server_verifier(DNSName("evil.example"))
    with pytest.raises(VerificationError, match="subjectAltName"):
        verifier.verify(pki.server.cert, [])


def test_client_chain_verifies_and_names_the_client(pki: Pki) -> None:
    alice = pki.client("alice")
    verified = _builder(pki).build_client_verifier().verify(alice.cert, [])
    assert verified.chain == [alice.cert, pki.ca.cert]
    assert verified.subjects == [x509.UniformResourceIdentifier("fedcore://client/alice")]


def test_certificates_of_another_ca_fail_verification(pki: Pki, other: Pki) -> None:
    with pytest.raises(VerificationError):
        _builder(pki).build_client_verifier().verify(other.client("alice").cert, [])
    with pytest.raises(VerificationError):
        _builder(pki).build_server_verifier(DNSName("localhost")).verify(other.server.cert, [])


def test_roles_are_not_interchangeable(pki: Pki) -> None:
    """A client certificate cannot serve TLS and the server's cannot authenticate a client."""
    with pytest.raises(VerificationError, match="EKU"):
        _builder(pki).build_client_verifier().verify(pki.server.cert, [])
    with pytest.raises(VerificationError):
        _builder(pki).build_server_verifier(DNSName("localhost")).verify(
            pki.client("alice").cert, []
        )


def test_server_sans_hold_dns_names_and_ip_addresses(pki: Pki) -> None:
    sans = pki.server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_algorithms_and_constraints(pki: Pki) -> None:
    alice = pki.client("alice")
    for identity in (pki.ca, pki.server, alice):
        assert isinstance(identity.key.curve, ec.SECP384R1)
        assert isinstance(identity.cert.signature_hash_algorithm, hashes.SHA384)
        assert identity.cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)

    def basic(cert: x509.Certificate) -> x509.BasicConstraints:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value

    def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    assert basic(pki.ca.cert).ca
    assert not basic(pki.server.cert).ca
    assert not basic(alice.cert).ca
    assert eku(pki.server.cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert eku(alice.cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_client_id_round_trips(pki: Pki) -> None:
    for client_id in CLIENTS:
        identity = pki.client(client_id)
        assert certs.client_id_of(identity.cert_pem) == client_id
        cn = identity.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        assert [attribute.value for attribute in cn] == [client_id]


def test_client_id_of_rejects_certificates_without_exactly_one_id(pki: Pki) -> None:
    with pytest.raises(CertError, match="0 fedcore://client/"):
        certs.client_id_of(pki.server.cert_pem)
    with pytest.raises(CertError, match="no subjectAltName"):
        certs.client_id_of(pki.ca.cert_pem)
    with pytest.raises(CertError, match="not a PEM certificate"):
        certs.client_id_of(b"garbage")
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.UTC)
    two = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "alice")]))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("fedcore://client/alice"),
                    x509.UniformResourceIdentifier("fedcore://client/bob"),
                ]
            ),
            critical=False,
        )
        .sign(pki.ca.key, hashes.SHA384())
    )
    with pytest.raises(CertError, match="2 fedcore://client/"):
        certs.client_id_of(certs.Identity(two, key).cert_pem)


def test_private_keys_are_0600_even_under_a_permissive_umask(pki: Pki, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ca = certs.create_ca(tmp_path)
        certs.create_client_cert(tmp_path, ca, "carol")
    finally:
        os.umask(old)
    keys = [*pki.root.rglob("*.key"), *tmp_path.rglob("*.key")]
    assert len(keys) == 6
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((tmp_path / "ca.pem").stat().st_mode) == 0o644
    assert not list(tmp_path.rglob(".*.tmp"))


def test_overwriting_is_refused_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _make_pki(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert _init(tmp_path) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert certs.certs_main(["add-client", "--dir", str(tmp_path), "--client", "alice"]) == 1
    with pytest.raises(CertError, match="refusing to overwrite"):
        certs.create_ca(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    argv = ["add-client", "--dir", str(tmp_path), "--client", "alice", "--force"]
    assert certs.certs_main(argv) == 0
    assert (tmp_path / "clients/alice.key").read_bytes() != before[tmp_path / "clients/alice.key"]
    assert certs.enrolled_clients(certs.server_dir(tmp_path)) == CLIENTS  # not enrolled twice

    assert _init(tmp_path, "--force") == 0
    assert (tmp_path / "ca.key").read_bytes() != before[tmp_path / "ca.key"]
    assert certs.enrolled_clients(certs.server_dir(tmp_path)) == CLIENTS


def test_add_client_issues_from_the_existing_ca(pki: Pki, tmp_path: Path) -> None:
    root = tmp_path / "pki"
    _make_pki(root)
    assert certs.certs_main(["add-client", "--dir", str(root), "--client", "carol"]) == 0
    assert certs.enrolled_clients(certs.server_dir(root)) == [*CLIENTS, "carol"]
    carol = certs.load_identity(root / "clients/carol.pem")
    ca = certs.load_identity(root / "ca.pem")
    PolicyBuilder().store(Store([ca.cert])).build_client_verifier().verify(carol.cert, [])


def test_init_with_a_client_count(tmp_path: Path) -> None:
    argv = ["init", "--dir", str(tmp_path), "--server-name", "h", "--clients", "3"]
    assert certs.certs_main(argv) == 0
    assert certs.enrolled_clients(certs.server_dir(tmp_path)) == [
        "client-0",
        "client-1",
        "client-2",
    ]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["init", "--dir", "D", "--clients", "2"], 2, "--server-name"),
        (["init", "--dir", "D", "--server-name", "h"], 2, "--clients"),
        (
            ["init", "--dir", "D", "--server-name", "h", "--clients", "1", "--client", "a"],
            2,
            "not allowed",
        ),
        (["init", "--dir", "D", "--server-name", "h", "--clients", "0"], 1, "at least 1"),
        (["init", "--dir", "D", "--server-name", "h", "--client", "../x"], 1, "invalid client id"),
        (
            ["init", "--dir", "D", "--server-name", "h", "--client", "a", "--client", "a"],
            1,
            "twice",
        ),
        (
            ["init", "--dir", "D", "--server-name", "bad name", "--clients", "1"],
            1,
            "invalid server name",
        ),
        (["add-client", "--dir", "D", "--client", "a"], 1, "ca.pem not found"),
        (["rotate"], 2, "invalid choice"),
    ],
)
def test_cli_errors_are_clear_and_write_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    argv = [str(tmp_path / "D") if arg == "D" else arg for arg in argv]
    assert certs.certs_main(argv) == code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "D").exists()


def test_load_identity_rejects_a_key_of_another_certificate(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "x.pem").write_bytes(pki.client("alice").cert_pem)
    (tmp_path / "x.key").write_bytes(pki.client("bob").key_pem)
    with pytest.raises(CertError, match="is not the private key"):
        certs.load_identity(tmp_path / "x.pem")
    with pytest.raises(CertError, match="not found"):
        certs.load_identity(tmp_path / "missing.pem")


# --- a real mutual-TLS handshake on loopback -------------------------------------------------


@dataclass
class MtlsServer:
    """A running gRPC server that demands client certificates from `pki`'s CA."""

    port: int
    seen: list[dict[str, list[bytes]]]


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[MtlsServer]:
    """A generic unary bytes→bytes handler that answers with the caller's certified client id."""
    seen: list[dict[str, list[bytes]]] = []

    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(dict(context.auth_context()))
        return certs.peer_client_id(context.auth_context()).encode() + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key_pem, pki.server.cert_pem)],
        root_certificates=pki.ca.cert_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    server.start()
    yield MtlsServer(port, seen)
    server.stop(grace=None)


def _call(
    port: int,
    root: bytes,
    client: certs.Identity | None,
    name_override: str | None = None,
) -> bytes:
    """Call WhoAmI over TLS trusting `root`, presenting `client` (if any)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    options = [("grpc.ssl_target_name_override", name_override)] if name_override else []
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        result: bytes = channel.unary_unary("/test.Echo/WhoAmI")(b"hi", timeout=10)
        return result


def _refused(
    port: int, root: bytes, client: certs.Identity | None, name: str | None = None
) -> None:
    """Assert the handshake fails: the call never reaches the handler."""
    with pytest.raises(grpc.RpcError) as caught:
        _call(port, root, client, name)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_enrolled_client_is_admitted_and_identified(pki: Pki, mtls_server: MtlsServer) -> None:
    before = len(mtls_server.seen)
    for client_id in CLIENTS:
        reply = _call(mtls_server.port, pki.ca.cert_pem, pki.client(client_id))
        assert reply == client_id.encode() + b":hi"
    context = mtls_server.seen[before]
    # What grpc exposes about the verified peer (same keys on grpcio 1.51 and 1.85):
    assert context["transport_security_type"] == [b"ssl"]
    assert context["peer_uri"] == [b"fedcore://client/alice"]
    assert context["x509_subject_alternative_name"] == [b"fedcore://client/alice"]
    assert context["x509_common_name"] == [b"alice"]
    assert certs.client_id_of(context["x509_pem_cert"][0]) == "alice"


def test_dialling_by_an_overridden_name_in_the_sans_works(
    pki: Pki, mtls_server: MtlsServer
) -> None:
    """Control for the wrong-name test: the override itself does not break the handshake."""
    reply = _call(mtls_server.port, pki.ca.cert_pem, pki.client("bob"), "localhost")
    assert reply == b"bob:hi"


def test_client_without_a_certificate_is_refused(pki: Pki, mtls_server: MtlsServer) -> None:
    before = len(mtls_server.seen)
    _refused(mtls_server.port, pki.ca.cert_pem, None)
    assert len(mtls_server.seen) == before


def test_client_with_another_cas_certificate_is_refused(
    pki: Pki, other: Pki, mtls_server: MtlsServer
) -> None:
    before = len(mtls_server.seen)
    _refused(mtls_server.port, pki.ca.cert_pem, other.client("alice"))
    assert len(mtls_server.seen) == before


def test_client_refuses_a_server_of_another_ca(
    pki: Pki, other: Pki, mtls_server: MtlsServer
) -> None:
    _refused(mtls_server.port, other.ca.cert_pem, other.client("alice"))


def test_client_refuses_a_server_name_not_in_the_certificate(
    pki: Pki, mtls_server: MtlsServer
) -> None:
    before = len(mtls_server.seen)
    _refused(mtls_server.port, pki.ca.cert_pem, pki.client("alice"), "wrong.example")
    assert len(mtls_server.seen) == before


def test_peer_client_id_needs_a_client_certificate() -> None:
    with pytest.raises(CertError, match="no client certificate"):
        certs.peer_client_id({"transport_security_type": [b"ssl"]})


def test_revoke_lists_an_enrolled_client_once_and_refuses_strangers(tmp_path, capsys):
    run = certs.certs_main
    directory = tmp_path / "certs"
    assert (
        run(["init", "--dir", str(directory), "--server-name", "localhost", "--clients", "2"]) == 0
    )
    server = directory / "server"
    assert certs.revoked_clients(server) == set()
    assert run(["revoke", "--dir", str(directory), "--client", "client-1"]) == 0
    assert run(["revoke", "--dir", str(server), "--client", "client-1"]) == 0
    assert "client-1 was already revoked" in capsys.readouterr().out
    assert certs.revoked_clients(server) == {"client-1"}
    assert (server / "revoked.txt").read_text() == "client-1\n"
    assert run(["revoke", "--dir", str(directory), "--client", "client-9"]) == 1
    assert "client-9 is not enrolled" in capsys.readouterr().err
