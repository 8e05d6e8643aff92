"""
The lab's own certificate authority, for its HTTPS fakes (the Redfish BMCs).

Real BMCs serve HTTPS with certificates from a site's own CA, and SlaveAPI
checks them against C{[redfish] ca_bundle}; the lab does the same, so the
client's verification is exercised for real instead of being turned off.
A L{LabCA} is made afresh at every lab start: its key lives only in this
process's memory (it is never written anywhere), and only its certificate is
written out, as the C{ca_bundle} SlaveAPI trusts. Each certificate it issues
names a host by DNS name and by IP address, since the Redfish client connects
to the address the BMC's name resolved to and verifies that address.

Keys are ECDSA P-256: quick to make, so a large lab starts without delay.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import CertificateOptions

from slaveapi.clients.ssh import replace_file

#: How long the lab's certificates are valid: longer than any lab runs.
VALIDITY: Final = datetime.timedelta(days=365)
#: How far back a certificate's validity starts, for clocks a little behind.
_BACKDATE: Final = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the lab CA issued, with its key, both PEM-encoded."""

    certificate_pem: bytes
    key_pem: bytes

    def server_options(self) -> CertificateOptions:
        """TLS server options presenting this certificate."""
        # cryptography's objects: pyOpenSSL takes them and deprecates its own, which
        # Twisted's annotations still name.
        key: Any = serialization.load_pem_private_key(self.key_pem, None)
        certificate: Any = x509.load_pem_x509_certificate(self.certificate_pem)
        return CertificateOptions(privateKey=key, certificate=certificate)


class LabCA:
    """
    A certificate authority made at start, in memory (see the module docstring).

    @ivar certificate_pem: the CA's certificate, PEM-encoded (the one thing to trust).
    """

    def __init__(self, name: str = "SlaveAPI lab CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self._certificate = (
            self._builder(self._name, public)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_pem = self._certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, dns_names: list[str], ip_addresses: list[str]) -> IssuedCertificate:
        """
        A server certificate, on a key of its own, whose subject alternative
        names are C{dns_names} and C{ip_addresses} (the first name, else the
        first address, is also its common name).

        @raise ValueError: no name and no address, or an address that is not one.
        """
        if not dns_names and not ip_addresses:
            raise ValueError("a certificate needs a DNS name or an IP address")
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns_names or ip_addresses)[0])])
        certificate = (
            self._builder(subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return IssuedCertificate(certificate.public_bytes(serialization.Encoding.PEM), key_pem)

    def _builder(self, subject: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        """A certificate of C{subject}'s key, issued by this CA, valid from a little ago for L{VALIDITY}."""
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + VALIDITY)
        )

    def write_certificate(self, path: str) -> str:
        """Write the CA's certificate (never its key) to C{path}, atomically; the absolute path."""
        replace_file(path, self.certificate_pem)
        return os.path.abspath(path)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates; a server signs its handshakes."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
