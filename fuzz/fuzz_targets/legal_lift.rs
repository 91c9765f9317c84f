//! Fuzz target: legal-exception matching and lifting on outside bytes (the JSON path walk
//! and the logfmt pair parser). Run: `cargo +nightly fuzz run legal_lift`.
//! Must never panic, and must never keep a field the exception does not list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logveil::config::{ExceptionConfig, Format, RedactConfig};
use logveil::redact::legal::{generate_pair, Exceptions};
use std::sync::OnceLock;

fn exceptions() -> &'static Exceptions {
    static X: OnceLock<Exceptions> = OnceLock::new();
    X.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("logveil-fuzz-legal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (_, public, _) = generate_pair(&dir).expect("a compliance key pair");
        let cfg = RedactConfig {
            compliance_key: Some(public),
            exceptions: vec![ExceptionConfig {
                name: "fuzz".into(),
                legal_basis: "fuzzing".into(),
                purpose: "fuzzing".into(),
                sources: Vec::new(),
                when: [(
                    "e".to_string(),
                    toml::Value::Array(vec!["a".into(), 1.into(), true.into()]),
                )]
                .into_iter()
                .collect(),
                fields: vec!["k".into(), "b.c".into(), "l.0.x".into()],
                retention_days: 1,
            }],
            ..RedactConfig::default()
        };
        Exceptions::from_config(&cfg).expect("a valid exception")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let format = [Format::Plain, Format::Json, Format::Logfmt, Format::Auto][usize::from(sel % 4)];
    let x = exceptions();
    for lifted in x.lift("any", format, text) {
        for k in lifted.values.keys() {
            assert!(lifted.exception.fields.contains(k), "an unlisted field was kept");
        }
        assert!(x.seal(&lifted).is_some());
    }
});
