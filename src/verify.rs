//! Offline verification of an archive (`logveil verify --archive DIR --keys DIR`).
//!
//! Needs only the archive and the hosts' public keys (`<keys>/<host>.pub`). For every chain
//! directory, in archive order, it checks that:
//! - every entry is part of the layout (stray files, bad names and leftover temp files are
//!   problems);
//! - each file decodes, its name is the seq in its header, and the header's host, stream and
//!   chain id are the directories it sits in (so a batch renamed to another seq, or replayed
//!   as a copy elsewhere, is caught);
//! - the host's key exists and each envelope's key id, signature and payload hash hold (so
//!   any changed byte of any file is caught);
//! - seqs run 1, 2, 3, … with no hole (a batch deleted from the middle is caught), seq 1
//!   starts from the genesis hash and each `prev_hash` is the previous envelope's link;
//! - the payload decompresses to the declared length with the declared number of records,
//!   by the receiver's own rules (`crate::receive::validate::check_payload`).
//!
//! Not detectable here: deleting the newest batch(es) of a chain, or a whole chain, leaves a
//! shorter archive that is still internally consistent. Catching that needs the signed
//! custody ledger of every write (a later issue).
//!
//! Counts: `hosts` and `chains` that hold at least one batch file, `batches` data envelopes
//! and `tombstones` tombstone envelopes that decoded, `records` the records of the data
//! envelopes that passed every check.

use crate::archive::{self, ChainListing};
use crate::envelope::{keys, Envelope, Hash, Kind, GENESIS_PREV_HASH};
use crate::receive::validate::check_payload;
use ed25519_dalek::VerifyingKey;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub hosts: u64,
    pub chains: u64,
    pub batches: u64,
    pub tombstones: u64,
    pub records: u64,
    /// One line each, naming the file or directory.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "hosts: {}, chains: {}, batches: {}, tombstones: {}, records: {}, problems: {}",
            self.hosts,
            self.chains,
            self.batches,
            self.tombstones,
            self.records,
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Verifies the archive under `archive` against the public keys in `keys`.
pub fn verify(archive: &Path, keys: &Path) -> Report {
    let mut report = Report::default();
    let listing = match archive::list(archive) {
        Ok(l) => l,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    for path in &listing.unexpected {
        report.problems.push(format!(
            "{}: not part of the archive layout",
            path.display()
        ));
    }
    let mut key_cache: HashMap<String, Option<VerifyingKey>> = HashMap::new();
    let mut hosts = BTreeSet::new();
    for chain in &listing.chains {
        for tmp in &chain.temp_files {
            report.problems.push(format!(
                "{}: leftover temporary file of an interrupted write",
                tmp.display()
            ));
        }
        if chain.batches.is_empty() {
            continue;
        }
        hosts.insert(chain.host.clone());
        report.chains += 1;
        let key = *key_cache
            .entry(chain.host.clone())
            .or_insert_with(|| load_key(keys, &chain.host, &mut report.problems));
        verify_chain(chain, key.as_ref(), &mut report);
    }
    report.hosts = hosts.len() as u64;
    report
}

fn load_key(keys: &Path, host: &str, problems: &mut Vec<String>) -> Option<VerifyingKey> {
    let path = keys.join(format!("{host}.pub"));
    match keys::load_verifying_key(&path) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(format!(
                "host {host}: no usable key, its batches cannot be authenticated: {e}"
            ));
            None
        }
    }
}

fn verify_chain(chain: &ChainListing, key: Option<&VerifyingKey>, report: &mut Report) {
    // The link of the previous seq, when that file was read and decoded.
    let mut prev: Option<(u64, Hash)> = None;
    let mut expected_seq = 1u64;
    for (seq, path) in &chain.batches {
        let (seq, p) = (*seq, path.display());
        if seq > expected_seq {
            let missing = if seq - expected_seq == 1 {
                format!("seq {expected_seq} is missing")
            } else {
                format!("seqs {expected_seq}..={} are missing", seq - 1)
            };
            report
                .problems
                .push(format!("{}: {missing} before {p}", chain.dir.display()));
        } else if seq < expected_seq {
            // Only seq 0 can get here: names are unique and sorted.
            report
                .problems
                .push(format!("{p}: seq {seq} is not a valid seq"));
        }
        expected_seq = seq.saturating_add(1);

        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                report.problems.push(format!("{p}: cannot read: {e}"));
                prev = None;
                continue;
            }
        };
        let env = match Envelope::decode(&bytes) {
            Ok(env) => env,
            Err(e) => {
                report.problems.push(format!("{p}: does not decode: {e}"));
                prev = None;
                continue;
            }
        };
        let h = &env.header;
        match h.kind {
            Kind::Data => report.batches += 1,
            Kind::Tombstone => report.tombstones += 1,
        }
        let mut found = Vec::new();
        if h.seq != seq {
            found.push(format!(
                "header says seq {}, the file name says {seq} (renamed or replayed)",
                h.seq
            ));
        }
        if h.host_id != chain.host || h.stream != chain.stream || h.chain_id != chain.chain_id {
            found.push(format!(
                "header names host {} stream {} chain {}, not the directory it is in",
                h.host_id,
                h.stream,
                h.chain_id_hex()
            ));
        }
        if seq == 1 && h.prev_hash != GENESIS_PREV_HASH {
            found.push("seq 1 does not start from the genesis hash".into());
        }
        if let Some((prev_seq, link)) = prev {
            if prev_seq + 1 == seq && h.prev_hash != link {
                found.push(format!(
                    "prev_hash does not match the link of seq {prev_seq}"
                ));
            }
        }
        if let Some(key) = key {
            if let Err(e) = env.verify(key) {
                found.push(e.to_string());
            }
        }
        match check_payload(&env, h.decompressed_len) {
            Ok(n) if found.is_empty() => report.records += n,
            Ok(_) => {}
            Err(e) => found.push(e.to_string()),
        }
        report
            .problems
            .extend(found.into_iter().map(|msg| format!("{p}: {msg}")));
        prev = Some((seq, env.next_link()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::test_support::{write_archive_file, Chain};
    use std::path::PathBuf;

    struct Fixture {
        archive: tempfile::TempDir,
        keys: tempfile::TempDir,
        files: Vec<PathBuf>,
    }

    /// Two hosts; web-1 has data, a tombstone and more data; web-2 one batch.
    fn fixture() -> Fixture {
        let archive = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let mut a = Chain::new("web-1", "default", [1; 16]);
        let mut b = Chain::new("web-2", "audit", [2; 16]);
        a.enroll(keys.path());
        b.enroll(keys.path());
        let mut files = Vec::new();
        for env in [
            a.next_data(&["a", "b"]),
            a.next_tombstone(),
            a.next_data(&["c"]),
            a.next_data(&["d"]),
            b.next_data(&["e"]),
        ] {
            files.push(write_archive_file(archive.path(), &env));
        }
        Fixture {
            archive,
            keys,
            files,
        }
    }

    fn run(fx: &Fixture) -> Report {
        verify(fx.archive.path(), fx.keys.path())
    }

    #[test]
    fn a_clean_archive_verifies() {
        let fx = fixture();
        let r = run(&fx);
        assert!(r.is_clean(), "{r}");
        assert_eq!(
            r.to_string(),
            "hosts: 2, chains: 2, batches: 4, tombstones: 1, records: 5, problems: 0\n"
        );
    }

    #[test]
    fn every_flipped_byte_of_every_file_is_a_problem() {
        let fx = fixture();
        for file in [&fx.files[0], &fx.files[1]] {
            let original = std::fs::read(file).unwrap();
            for i in 0..original.len() {
                let mut bad = original.clone();
                bad[i] ^= 0x01;
                std::fs::write(file, &bad).unwrap();
                let r = run(&fx);
                assert!(
                    !r.is_clean(),
                    "flipping byte {i} of {} went unnoticed",
                    file.display()
                );
                let name = file.display().to_string();
                assert!(r.problems.iter().any(|p| p.contains(&name)), "{r}");
            }
            std::fs::write(file, &original).unwrap();
        }
        assert!(run(&fx).is_clean());
    }

    #[test]
    fn a_batch_deleted_from_the_middle_is_a_problem() {
        let fx = fixture();
        std::fs::remove_file(&fx.files[1]).unwrap();
        let r = run(&fx);
        assert_eq!(r.problems.len(), 1, "{r}");
        assert!(r.problems[0].contains("seq 2 is missing"), "{r}");
    }

    #[test]
    fn renamed_and_replayed_batches_are_problems() {
        let fx = fixture();
        // Swap seqs 3 and 4.
        let (three, four) = (&fx.files[2], &fx.files[3]);
        let tmp = three.with_extension("swap");
        std::fs::rename(three, &tmp).unwrap();
        std::fs::rename(four, three).unwrap();
        std::fs::rename(&tmp, four).unwrap();
        let r = run(&fx);
        assert!(
            r.problems.iter().any(|p| p.contains("renamed or replayed")),
            "{r}"
        );

        // Replay seq 1 as seq 5.
        let fx = fixture();
        let five = fx.files[3].with_file_name(archive::batch_file_name(5));
        std::fs::copy(&fx.files[0], &five).unwrap();
        let r = run(&fx);
        assert!(!r.is_clean());
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains(&five.display().to_string())),
            "{r}"
        );

        // Replay web-2's batch into web-1's chain directory as seq 5.
        let fx = fixture();
        let five = fx.files[3].with_file_name(archive::batch_file_name(5));
        std::fs::copy(&fx.files[4], &five).unwrap();
        let r = run(&fx);
        assert!(
            r.problems.iter().any(|p| p.contains("not the directory")),
            "{r}"
        );
    }

    #[test]
    fn missing_keys_and_stray_files_are_problems() {
        let fx = fixture();
        std::fs::remove_file(fx.keys.path().join("web-2.pub")).unwrap();
        std::fs::write(fx.files[0].with_file_name("notes.txt"), b"x").unwrap();
        std::fs::write(fx.files[0].with_file_name(".tmp-9-00"), b"x").unwrap();
        let r = run(&fx);
        assert_eq!(r.problems.len(), 3, "{r}");
        assert!(r.problems.iter().any(|p| p.contains("host web-2")));
        assert!(r.problems.iter().any(|p| p.contains("notes.txt")));
        assert!(r.problems.iter().any(|p| p.contains(".tmp-9-00")));
    }

    #[test]
    fn a_batch_signed_by_another_hosts_key_is_a_problem() {
        let fx = fixture();
        let mut impostor = Chain::new("web-2", "audit", [2; 16]);
        impostor.key = Chain::new("web-1", "default", [1; 16]).key;
        let bytes = impostor.data_over(&impostor.records(&["x"]), 1);
        std::fs::remove_file(&fx.files[4]).unwrap();
        std::fs::write(&fx.files[4], bytes).unwrap();
        let r = run(&fx);
        assert!(r.problems.iter().any(|p| p.contains("key id")), "{r}");
    }

    #[test]
    fn deleting_the_newest_batch_is_not_detectable_without_the_ledger() {
        let fx = fixture();
        std::fs::remove_file(&fx.files[3]).unwrap();
        assert!(run(&fx).is_clean());
    }
}
