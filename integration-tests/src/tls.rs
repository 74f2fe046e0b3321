//! A throw-away PKI for TLS tests: a CA, a server certificate for `localhost`/`127.0.0.1`
//! and a client certificate, generated with rcgen for each test.

use constructr_core::tls::{PemSource, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use testcontainers::{ContainerRequest, GenericImage, ImageExt as _};

/// PEM-encoded test certificates and keys.
pub struct TestPki {
    /// The CA certificate.
    pub ca_pem: String,
    /// etcd's server certificate (SANs `localhost`, `127.0.0.1`).
    pub server_cert_pem: String,
    /// etcd's server key.
    pub server_key_pem: String,
    /// A client certificate signed by the CA (CN `constructr`).
    pub client_cert_pem: String,
    /// The client key.
    pub client_key_pem: String,
}

impl TestPki {
    /// Generates a fresh CA, server and client certificate.
    pub fn generate() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "constructr test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("self-signed CA");

        let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(sans).expect("leaf params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let key = KeyPair::generate().expect("leaf key");
            let cert = p.signed_by(&key, &ca).expect("signed leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert_pem, server_key_pem) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "etcd",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert_pem, client_key_pem) =
            leaf(vec![], "constructr", ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca_pem: ca.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        }
    }
}

impl TestPki {
    /// A client's TLS settings: trusting this CA, with the client certificate.
    pub fn client_tls(&self) -> TlsConfig {
        TlsConfig::new(PemSource::Pem(self.ca_pem.clone())).with_client_identity(
            PemSource::Pem(self.client_cert_pem.clone()),
            PemSource::Pem(self.client_key_pem.clone()),
        )
    }

    /// `request` with this CA, the server certificate and its key in the container as
    /// `/certs/ca.pem`, `/certs/server.pem` and `/certs/server-key.pem`.
    pub fn copy_server_files(
        &self,
        request: ContainerRequest<GenericImage>,
    ) -> ContainerRequest<GenericImage> {
        request
            .with_copy_to("/certs/ca.pem", self.ca_pem.clone().into_bytes())
            .with_copy_to(
                "/certs/server.pem",
                self.server_cert_pem.clone().into_bytes(),
            )
            .with_copy_to(
                "/certs/server-key.pem",
                self.server_key_pem.clone().into_bytes(),
            )
    }
}
