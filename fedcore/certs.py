"""Certificates for fedcore's mutual TLS: a private CA, the server's certificate, one per client.

Keys are ECDSA P-384 and certificates are signed with SHA-384. A client's id is its subject CN
and, authoritatively, the single URI SAN `fedcore://client/<id>`, so the server binds an RPC's
claimed `client_id` to the certificate the TLS handshake verified (`peer_client_id` reads it
from a gRPC `context.auth_context()`). The server admits only ids listed in `enrolled.txt`
and refuses those in `revoked.txt` (there are no CRLs).

Layout of a certificate directory (`fedcore certs init --dir DIR ...`):

    DIR/ca.pem  DIR/ca.key                 the CA: ca.key signs new clients, keep it offline
    DIR/server/                            all the server needs (`deployment.certs=DIR/server`):
        ca.pem  server.pem  server.key     the CA's certificate, the server's, SANs = --server-name
        enrolled.txt  revoked.txt          enrolment list and revocations, one client id a line
    DIR/clients/<id>.pem  <id>.key         one pair per client; copy each, with ca.pem, to its
                                           client only

Private keys are PEM (PKCS#8) and *unencrypted*, so servers and clients start unattended;
they are written with mode 0600 and are protected only by file permissions. Only APIs present
in cryptography 43 (the RISC-V client's version) are used.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENTS_DIR = "clients"
#: The folder of a certificate directory that the server is given: no CA key, no client keys.
SERVER_DIR = "server"
ENROLLED = "enrolled.txt"
#: Enrolled clients whose certificates the server no longer accepts (one id a line). A client
#: keeps its number (its line in enrolled.txt), so a run with revocations still resumes.
REVOKED = "revoked.txt"
CLIENT_URI_PREFIX = "fedcore://client/"
CA_DAYS = 3650
LEAF_DAYS = 825

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CLOCK_SKEW = datetime.timedelta(minutes=5)


class CertError(Exception):
    """A certificate operation that cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class Identity:
    """A certificate with its private key: a CA to sign with, or a TLS identity to present."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The certificate as PEM, as grpc's credential functions take it."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, as grpc's credential functions take it."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def check_client_id(client_id: str) -> str:
    """Return `client_id` if it is a valid id (it names files and a URI), else raise CertError."""
    if not _CLIENT_ID.fullmatch(client_id):
        raise CertError(
            f"invalid client id {client_id!r}: use 1-64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return client_id


def client_cert_path(directory: Path | str, client_id: str) -> Path:
    """Where the certificate of `client_id` lives in a certificate directory (key: `.key`)."""
    return Path(directory) / CLIENTS_DIR / f"{check_client_id(client_id)}.pem"


def create_ca(
    directory: Path | str, name: str = "fedcore CA", days: int = CA_DAYS, *, force: bool = False
) -> Identity:
    """Create a self-signed CA in `directory` (ca.pem, ca.key) that signs server and clients."""
    root = Path(directory)
    _refuse_existing([root / CA_CERT, root / CA_KEY], force)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .sign(key, hashes.SHA384())
    )
    ca = Identity(cert, key)
    _write_identity(ca, root / CA_CERT)
    return ca


def server_dir(directory: Path | str) -> Path:
    """The server's folder of a certificate directory."""
    return Path(directory) / SERVER_DIR


def create_server_cert(
    directory: Path | str,
    ca: Identity,
    names: list[str],
    days: int = LEAF_DAYS,
    *,
    force: bool = False,
) -> Identity:
    """Issue the server's certificate (server/server.pem, .key) for DNS names and IP
    addresses, with the CA's certificate beside it."""
    if not names:
        raise CertError("the server certificate needs at least one DNS name or IP address")
    root = server_dir(directory)
    _refuse_existing([root / SERVER_CERT, root / SERVER_KEY], force)
    sans = [_server_san(name) for name in names]
    identity = _issue(ca, "fedcore server", sans, ExtendedKeyUsageOID.SERVER_AUTH, days)
    _write_identity(identity, root / SERVER_CERT)
    _write_atomic(root / CA_CERT, ca.cert_pem, 0o644)
    return identity


def create_client_cert(
    directory: Path | str,
    ca: Identity,
    client_id: str,
    days: int = LEAF_DAYS,
    *,
    force: bool = False,
) -> Identity:
    """Issue a client's certificate (clients/<id>.pem, .key) and enrol its id in the server's
    enrolled.txt."""
    cert_path = client_cert_path(directory, client_id)
    _refuse_existing([cert_path, cert_path.with_suffix(".key")], force)
    san = x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + client_id)
    identity = _issue(ca, client_id, [san], ExtendedKeyUsageOID.CLIENT_AUTH, days)
    _write_identity(identity, cert_path)
    _enrol(server_dir(directory), client_id)
    return identity


def load_identity(cert_path: Path | str) -> Identity:
    """Load a certificate and the key beside it (same name, `.key`), checking that they match."""
    cert_file = Path(cert_path)
    key_file = cert_file.with_suffix(".key")
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(f"{exc.filename} not found (create it with `fedcore certs`)") from None
    except ValueError as exc:
        raise CertError(f"{cert_file} or {key_file} is not valid PEM: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_file} is not an EC private key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertError(f"{key_file} is not the private key of {cert_file}")
    return Identity(cert, key)


def client_id_of(cert_pem: bytes) -> str:
    """The client id bound to a client certificate: its one `fedcore://client/<id>` URI SAN."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertError(f"not a PEM certificate: {exc}") from None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertError("certificate has no subjectAltName, so no fedcore client id") from None
    uris = [
        uri
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(CLIENT_URI_PREFIX)
    ]
    if len(uris) != 1:
        raise CertError(f"certificate has {len(uris)} {CLIENT_URI_PREFIX}<id> URI SANs, not 1")
    return check_client_id(uris[0].removeprefix(CLIENT_URI_PREFIX))


def peer_client_id(auth_context: Mapping[str, Sequence[bytes]]) -> str:
    """The client id of a gRPC peer, from the certificate its mutual-TLS handshake verified."""
    pems = auth_context.get("x509_pem_cert")
    if not pems:
        raise CertError("the peer presented no client certificate (is mutual TLS enabled?)")
    return client_id_of(pems[0])


def enrolled_clients(directory: Path | str) -> list[str]:
    """The client ids in `directory`/enrolled.txt, in file order (blank lines ignored)."""
    path = Path(directory) / ENROLLED
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CertError(f"{path} not found (create it with `fedcore certs init`)") from None
    return [check_client_id(line.strip()) for line in lines if line.strip()]


def revoked_clients(directory: Path | str) -> set[str]:
    """The client ids in `directory`/revoked.txt (none when it does not exist)."""
    try:
        lines = (Path(directory) / REVOKED).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return set()
    return {check_client_id(line.strip()) for line in lines if line.strip()}


def revoke_client(directory: Path, client_id: str) -> bool:
    """Add an enrolled client to revoked.txt of a server folder, or of the server folder of a
    certificate directory; False when it was revoked already."""
    if (server_dir(directory) / ENROLLED).exists():
        directory = server_dir(directory)
    if check_client_id(client_id) not in enrolled_clients(directory):
        raise CertError(f"{client_id} is not enrolled in {directory / ENROLLED}")
    if client_id in revoked_clients(directory):
        return False
    with (directory / REVOKED).open("a", encoding="utf-8") as handle:
        handle.write(f"{client_id}\n")
    return True


def certs_main(argv: list[str]) -> int:
    """`fedcore certs init|add-client|revoke ...`: create, extend or revoke in a certificate
    directory."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "init":
            _init(args.dir, args.server_name, _init_client_ids(args), args.force)
        elif args.command == "revoke":
            done = revoke_client(args.dir, args.client)
            state = "revoked" if done else "was already revoked"
            print(f"{args.client} {state}: a running server refuses it within a heartbeat")
        else:
            ca = load_identity(args.dir / CA_CERT)
            create_client_cert(args.dir, ca, args.client, force=args.force)
            print(
                f"wrote {client_cert_path(args.dir, args.client)} (+ .key); enrolled {args.client}"
            )
    except (CertError, OSError) as exc:
        print(f"fedcore certs: {exc}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    """The argument parser of `fedcore certs`."""
    parser = argparse.ArgumentParser(
        prog="fedcore certs", description="Create the CA and the certificates for mutual TLS."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create a CA, the server's and clients' certificates")
    init.add_argument("--dir", type=Path, required=True, help="certificate directory")
    init.add_argument(
        "--server-name",
        action="append",
        required=True,
        help="a DNS name or IP address clients dial the server by (repeatable)",
    )
    who = init.add_mutually_exclusive_group(required=True)
    who.add_argument("--clients", type=int, metavar="N", help="N clients: client-0 .. client-N-1")
    who.add_argument("--client", action="append", metavar="ID", help="a client id (repeatable)")
    init.add_argument("--force", action="store_true", help="replace existing keys and the CA")
    add = commands.add_parser("add-client", help="issue and enrol one more client")
    add.add_argument("--dir", type=Path, required=True, help="certificate directory")
    add.add_argument("--client", required=True, metavar="ID", help="the client id")
    add.add_argument("--force", action="store_true", help="replace the client's existing key")
    revoke = commands.add_parser("revoke", help="stop accepting an enrolled client's certificate")
    revoke.add_argument(
        "--dir", type=Path, required=True, help="certificate directory, or the server's folder"
    )
    revoke.add_argument("--client", required=True, metavar="ID", help="the client id")
    return parser


def _init_client_ids(args: argparse.Namespace) -> list[str]:
    """The client ids `init` was asked for: `--client` ids, or client-0 .. client-N-1."""
    if args.client is None:
        if args.clients < 1:
            raise CertError("--clients must be at least 1")
        return [f"client-{i}" for i in range(args.clients)]
    ids = [check_client_id(client_id) for client_id in args.client]
    if len(set(ids)) != len(ids):
        raise CertError("the same --client id is given twice")
    return ids


def _init(directory: Path, server_names: list[str], client_ids: list[str], force: bool) -> None:
    """Create a whole certificate directory, checking every target before writing any."""
    server = server_dir(directory)
    targets = [directory / CA_CERT, directory / CA_KEY]
    targets += [server / name for name in (CA_CERT, SERVER_CERT, SERVER_KEY, ENROLLED)]
    for client_id in client_ids:
        cert_path = client_cert_path(directory, client_id)
        targets += [cert_path, cert_path.with_suffix(".key")]
    _refuse_existing(targets, force)
    for name in server_names:
        _server_san(name)
    if force:  # a new CA invalidates every earlier enrolment and revocation
        (server / ENROLLED).unlink(missing_ok=True)
        (server / REVOKED).unlink(missing_ok=True)
    ca = create_ca(directory, force=force)
    create_server_cert(directory, ca, server_names, force=force)
    for client_id in client_ids:
        create_client_cert(directory, ca, client_id, force=force)
    print(
        f"wrote {directory}: CA, {server} (the server's folder: certificate for "
        f"{', '.join(server_names)}, {ENROLLED}), {len(client_ids)} client certificate(s) in "
        f"{directory / CLIENTS_DIR}"
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    """A certificate builder with names, validity and key identifiers filled in."""
    if days < 1:
        raise CertError(f"validity must be at least 1 day, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _issue(
    ca: Identity,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> Identity:
    """Issue a leaf (CA:false) certificate signed by `ca` for a fresh P-384 key."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(subject, ca.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA384())
    )
    return Identity(cert, key)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    """A KeyUsage extension with only the named bits set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _server_san(name: str) -> x509.GeneralName:
    """The SAN entry for a server name: an IPAddress for an IP literal, else a DNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or len(name) > 253 or not name.isascii() or any(c.isspace() for c in name):
        raise CertError(f"invalid server name {name!r}: give a DNS name or an IP address")
    return x509.DNSName(name)


def _refuse_existing(paths: list[Path], force: bool) -> None:
    """Raise CertError naming the files that exist, unless `force` allows replacing them."""
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        raise CertError(f"refusing to overwrite {', '.join(existing)} (pass --force to replace)")


def _write_identity(identity: Identity, cert_path: Path) -> None:
    """Write the key (mode 0600) and then the certificate, each atomically by rename."""
    _write_atomic(cert_path.with_suffix(".key"), identity.key_pem, 0o600)
    _write_atomic(cert_path, identity.cert_pem, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` via a temp file created with `mode`: no partial file, no moment of wider access."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it
            handle.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _enrol(directory: Path, client_id: str) -> None:
    """Append `client_id` to enrolled.txt unless it is already listed."""
    path = directory / ENROLLED
    if path.exists() and client_id in enrolled_clients(directory):
        return
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(client_id + "\n")
