//! Certificates for TLS tests, made with the `openssl` command: no key material is committed,
//! and a missing `openssl` fails loudly with an install hint.

use std::path::Path;

/// Writes into `dir` a test CA (`ca.crt`, `ca.key`), a server certificate for `redis.test`
/// and 127.0.0.1 (`server.crt`, `server.key`; also usable as a client certificate, for a
/// replica's link) and a client certificate (`client.crt`, `client.key`). EC P-256, valid
/// two days.
pub fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): TLS tests make their certificates with it; install it (Debian: apt-get install openssl)")
        });
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=tidings test CA", "-days", "2"]].concat());
    for (name, cn, ext) in [
        ("server", "redis.test", "subjectAltName=DNS:redis.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
        ("client", "tidings", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, crt, extfile) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        run(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")]].concat());
        run(&["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", &crt, "-days", "2", "-extfile", &extfile]);
    }
}
