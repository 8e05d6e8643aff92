"""
A throwaway certificate authority for the tests that speak TLS to a real
peer (a Buildbot master, a Redfish BMC): a CA certificate, and server
certificates it signs for DNS names and IP addresses.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import Certificate, CertificateOptions

#: Certificates are valid from a day before they are made, so a clock a little behind does not matter.
_VALIDITY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's key and certificate, and the server certificates it issues."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def make(cls, name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _VALIDITY)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return cls(key, certificate)

    def pem(self) -> bytes:
        """The CA certificate, PEM-encoded (a CA bundle of one)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def trust_root(self) -> Certificate:
        """The CA certificate as Twisted's TLS policies take it."""
        return Certificate.loadPEM(self.pem())

    def issue_certificate(self, *names: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A server key and certificate for C{names} (DNS names or IP addresses; the first is its CN)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _VALIDITY)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return key, certificate

    def issue(self, *names: str) -> CertificateOptions:
        """Server TLS options (Twisted) with a certificate for C{names} signed by this CA."""
        key, certificate = self.issue_certificate(*names)
        return CertificateOptions(privateKey=key, certificate=certificate)  # type: ignore[arg-type]  # takes cryptography keys too
