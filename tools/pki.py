"""A local certificate authority and one certificate per chatkore process, for `make run` and the tests.

The layout is the one cert-manager gives a Certificate's Secret (`ca.crt`, `tls.crt`, `tls.key`),
one folder per process, so `CHATKORE_GRPC_TLS_DIR` points at either the same way.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROCESSES = ("auth", "billing", "inference", "edge")
VALID_DAYS = 825


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    # Created with its final mode, so a key is never readable by others even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str,
          key: ec.EllipticCurvePrivateKey | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate whose common name is the process's identity (what callers are authorised by)
    and whose DNS names are what peers dial it as."""
    key = key or _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def new_ca(common_name: str = "chatkore local CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS + 30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def write_identity(directory: Path, ca_cert: x509.Certificate, cert: x509.Certificate,
                   key: ec.EllipticCurvePrivateKey) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(directory / "tls.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(directory / "tls.key", _pem_key(key), private=True)
    return directory


def ensure(root: Path, processes: tuple[str, ...] = PROCESSES) -> Path:
    """`root/<process>/{ca.crt,tls.crt,tls.key}` for every process, under one CA kept in `root/ca/`.

    What exists is kept (a restart of `make run` keeps its certificates); what is missing is
    issued by the existing CA. The CA's key stays in `root/ca/`, which no process reads.
    """
    root.mkdir(parents=True, exist_ok=True)
    ca_dir = root / "ca"
    if (ca_dir / "ca.key").exists() and (ca_dir / "ca.crt").exists():
        ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca_cert, ca_key = new_ca()
        ca_dir.mkdir(parents=True, exist_ok=True)
        ca_dir.chmod(0o700)
        _write(ca_dir / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
        _write(ca_dir / "ca.key", _pem_key(ca_key), private=True)
    for name in processes:
        if not all((root / name / f).exists() for f in ("ca.crt", "tls.crt", "tls.key")):
            write_identity(root / name, ca_cert, *issue(ca_cert, ca_key, name))
    return root


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m tools.pki DIR   (a CA in DIR/ca, and DIR/<process>/{ca.crt,tls.crt,tls.key})")
    print(ensure(Path(sys.argv[1])))
