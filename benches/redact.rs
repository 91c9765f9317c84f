//! Criterion bench of the redaction engine on the PII corpus mix (`../shared/corpus/pii`),
//! one record at a time, in `auto` format, like `logveil redact`. Falls back to a small
//! built-in mix when the corpus is not there.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use logveil::config::Format;
use logveil::redact::{Counts, Redactor};

fn lines() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/corpus/pii/dev.jsonl"
    );
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|v| {
                v["line"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect(),
        Err(_) => vec![
            r#"{"ts":"2024-05-11T17:58:53Z","msg":"address verified","email":"a@b.io","name":"T B","client_ip":"10.1.2.3"}"#.into(),
            "May 12 10:48:28 worker-03 sshd[16486]: Connection closed by 46.102.44.252 port 31031".into(),
            "2024-10-06 03:53:26,167 INFO lwa.client auth: token expired (iat=1728179606)".into(),
        ],
    }
}

fn bench(c: &mut Criterion) {
    let red = Redactor::defaults();
    let lines = lines();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let mut g = c.benchmark_group("redact");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.sample_size(10);
    g.bench_function("dev_corpus_auto", |b| {
        let mut counts = Counts::default();
        b.iter(|| {
            let mut n = 0;
            for l in &lines {
                n += red
                    .redact_record(l, Format::Auto, &mut counts, None)
                    .text
                    .len();
                counts.clear();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
