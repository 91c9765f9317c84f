//! HTTPS between agent and central store: a private CA, a server name that differs from the
//! URL's host, and client certificates (mTLS).

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::time::Duration;

struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "logveil test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn setup(w: &World, pki: &Pki) {
    std::fs::write(w.path("ca.pem"), pki.ca.pem()).unwrap();
    let (cert, key) = pki.issue(&["logs.test"], ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(w.path("server.pem"), cert).unwrap();
    std::fs::write(w.path("server.key"), key).unwrap();
    let (cert, key) = pki.issue(&["test-host"], ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(w.path("client.pem"), cert).unwrap();
    std::fs::write(w.path("client.key"), key).unwrap();
}

#[test]
fn agent_ships_over_mutual_tls_to_a_private_ca() {
    let pki = Pki::new();
    let mut w = World::new();
    setup(&w, &pki);
    w.receiver_extra = format!(
        "[receiver.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        w.path("server.pem").display(),
        w.path("server.key").display(),
        w.path("ca.pem").display()
    );
    let _store = w.start_receiver();
    // The URL names the address; the certificate names logs.test.
    w.agent_extra = format!(
        "[sink.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"logs.test\"\n",
        w.path("ca.pem").display(),
        w.path("client.pem").display(),
        w.path("client.key").display()
    );
    let https = w.url().replace("http://", "https://");
    let mut agent = start_agent_with_url(&mut w, &https);
    let file = w.logs().join("tls.log");
    append(&file, "over tls one\nover tls two\n");
    let records = w.wait_records(2, Duration::from_secs(60));
    assert_file_shipped_exactly_once(&records, &file);
    agent.kill9();

    // Without a client certificate the store refuses the connection: nothing arrives.
    w.agent_extra = format!(
        "[sink.tls]\nca = \"{}\"\nserver_name = \"logs.test\"\n",
        w.path("ca.pem").display()
    );
    let agent = start_agent_with_url(&mut w, &https);
    append(&file, "no client cert\n");
    wait_until(Duration::from_secs(60), "a failed delivery", || {
        agent.log_text().contains("delivery failed")
    });
    assert_eq!(w.records().len(), 2);
}

fn start_agent_with_url(w: &mut World, url: &str) -> Proc {
    let cfg = w.write_agent_config();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&w.url(), url);
    std::fs::write(&cfg, text).unwrap();
    let log = w.path(&format!("out/tls-agent-{}.log", rand::random::<u32>()));
    let child = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(open_append(&log))
        .spawn()
        .unwrap();
    Proc {
        child: Some(child),
        log,
    }
}
