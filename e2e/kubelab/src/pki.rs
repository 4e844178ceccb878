//! The lab's public-key infrastructure: one CA per lab, a serving certificate for etcd and the
//! API server, client certificates for every identity (admin, controllers, scheduler, each node's
//! kubelet, kube-proxy, the API server's etcd client) and the service-account signing key.
//!
//! Everything is ECDSA P-256 and written as PEM under one directory, keys 0600, so a failing
//! lab can be inspected with `openssl x509 -text`.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Errors of certificate generation and writing.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate for {name}: {source}")]
    Generate {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, PkiError>;

/// A certificate and its key, as files and as PEM text (kubeconfigs embed the text).
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Who a certificate is for.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    /// Common name: the Kubernetes user name for client certificates.
    pub common_name: String,
    /// Organizations: the Kubernetes groups for client certificates.
    pub groups: Vec<String>,
    /// DNS names and IP addresses (serving certificates).
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Usable as a TLS server certificate.
    pub server: bool,
    /// Usable as a TLS client certificate.
    pub client: bool,
}

impl Subject {
    /// A client identity: user `name` in `groups`.
    pub fn client(name: &str, groups: &[&str]) -> Subject {
        Subject {
            common_name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            client: true,
            ..Subject::default()
        }
    }
}

/// The lab CA and the files it issued.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file and text).
    pub ca: CertFiles,
    /// Service-account token signing key (private, PEM) and its public key.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

impl Pki {
    /// Makes a new CA and service-account key pair in `dir`.
    pub fn create(dir: &Path) -> Result<Pki> {
        mkdir(dir)?;
        let gen_err = |source| PkiError::Generate {
            name: "lab CA".into(),
            source,
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "wirekube-lab-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let ca = write_pair(dir, "ca", cert.pem(), key.serialize_pem())?;
        let issuer = Issuer::new(params, key);

        let sa = KeyPair::generate().map_err(|source| PkiError::Generate {
            name: "service-account signing key".into(),
            source,
        })?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        write(&sa_key, &sa.serialize_pem(), 0o600)?;
        write(&sa_pub, &sa.public_key_pem(), 0o644)?;
        Ok(Pki {
            dir: dir.to_owned(),
            issuer,
            ca,
            sa_key,
            sa_pub,
        })
    }

    /// Issues a certificate for `subject`, written as `<file>.crt` / `<file>.key`.
    pub fn issue(&self, file: &str, subject: &Subject) -> Result<CertFiles> {
        let gen_err = |source| PkiError::Generate {
            name: file.into(),
            source,
        };
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, subject.common_name.as_str());
        for g in &subject.groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, g.as_str());
        }
        for d in &subject.dns {
            let name = d.clone().try_into().map_err(gen_err)?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params
            .subject_alt_names
            .extend(subject.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if subject.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if subject.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        write_pair(&self.dir, file, cert.pem(), key.serialize_pem())
    }
}

fn write_pair(dir: &Path, file: &str, cert_pem: String, key_pem: String) -> Result<CertFiles> {
    let cert = dir.join(format!("{file}.crt"));
    let key = dir.join(format!("{file}.key"));
    write(&cert, &cert_pem, 0o644)?;
    write(&key, &key_pem, 0o600)?;
    Ok(CertFiles {
        cert,
        key,
        cert_pem,
        key_pem,
    })
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `text` to `path` with `mode`.
pub(crate) fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::write(path, text).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_client_and_server_certificates_signed_by_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path()).unwrap();
        let node = pki
            .issue(
                "kubelet-a",
                &Subject::client("system:node:a", &["system:nodes"]),
            )
            .unwrap();
        assert!(node.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(&node.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "keys are private");
        let server = Subject {
            common_name: "kube-apiserver".into(),
            dns: vec!["kubernetes".into()],
            ips: vec!["10.96.0.1".parse().unwrap()],
            server: true,
            ..Subject::default()
        };
        pki.issue("apiserver", &server).unwrap();
        for f in ["ca.crt", "ca.key", "sa.key", "sa.pub", "apiserver.crt"] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
    }

    #[test]
    fn a_bad_dns_name_is_an_error_naming_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path()).unwrap();
        let bad = Subject {
            common_name: "x".into(),
            dns: vec!["é".into()],
            server: true,
            ..Subject::default()
        };
        let err = pki.issue("bad", &bad).unwrap_err().to_string();
        assert!(err.contains("certificate for bad"), "{err}");
    }
}
