//! Offline verification of an archive (`logveil verify --archive DIR --keys DIR
//! [--store-key store.pub]`).
//!
//! Needs only the archive (with its custody ledger, `.custody/ledger.jsonl`), the hosts'
//! public keys (the trusted keys directory, revoked keys included: what they signed before
//! revocation stays verifiable) and, for the ledger, the store's public key. It works on a
//! copy. For every chain, in archive order, it checks that:
//! - every entry is part of the layout (stray files, bad names and leftover temp files are
//!   problems);
//! - each file decodes, its name is the seq in its header, and the header's host, stream and
//!   chain id are the directories it sits in (so a batch renamed to another seq, or replayed
//!   as a copy elsewhere, is caught);
//! - the key id names one of the host's enrolled keys and the signature and payload hash
//!   hold (so any changed byte of any file is caught);
//! - seqs run 1, 2, 3, … with no hole (a batch deleted from the middle is caught), seq 1
//!   starts from the genesis hash and each `prev_hash` is the previous envelope's link;
//! - the payload decompresses to the declared length with the declared number of records,
//!   by the receiver's own rules (`crate::receive::validate::check_payload`).
//!
//! With a ledger, also:
//! - the ledger's own format, numbering, hash chain and signatures (`crate::custody::read`):
//!   an edited, removed or reordered entry is reported with its line;
//! - every archived batch has an `accepted` entry with the same day and envelope SHA-256,
//!   and every `accepted` entry's batch is in the archive unless a `retention_deleted`
//!   entry covers it — so deleting the newest batch, a chain's tail, or a whole chain is
//!   caught, and so is a batch slipped in that the store never accepted;
//! - a hole in a chain is allowed only where the ledger holds a `gap` entry whose statement
//!   is signed by the host's key (then the next batch must link to the declared link), or
//!   where retention removed the older batches (then the first remaining batch must link to
//!   the head the ledger recorded for the seq before it).
//!
//! Not detectable: removing the ledger's newest entries together with the archive's newest
//! batches they describe, by someone holding the store's key. An auditor who writes down
//! the ledger head (printed by every run) closes that: a later head must extend it.
//!
//! Counts: `hosts` and `chains` that hold at least one batch file, `batches` data envelopes
//! and `tombstones` tombstone envelopes that decoded, `records` the records of the data
//! envelopes that passed every check. Per chain the report also lists the same counts and
//! the distinct redaction policy hashes its data envelopes carry (the rules in force).

use crate::archive::{self, ChainListing};
use crate::custody::{self, Event};
use crate::envelope::{keys, Envelope, Hash, Kind, GENESIS_PREV_HASH};
use crate::receive::validate::check_payload;
use ed25519_dalek::VerifyingKey;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Entries of the custody ledger, when there is one.
    pub ledger_entries: Option<u64>,
    /// `(n, hash)` of the ledger's last entry.
    pub ledger_head: Option<(u64, Hash)>,
    /// `(ledger file, n, hash)` of every ledger's last entry (several with a shared archive).
    pub ledger_heads: Vec<(String, u64, Hash)>,
    /// One line each, naming the file or directory.
    pub problems: Vec<String>,
    /// Per chain that holds at least one batch file, in archive order.
    pub chain_summaries: Vec<ChainSummary>,
}

/// What one chain holds: counted like the report's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSummary {
    pub host: String,
    pub stream: String,
    /// The chain id, hex.
    pub chain: String,
    pub batches: u64,
    pub tombstones: u64,
    pub records: u64,
    /// Distinct `policy_hash` values of the chain's decoded data envelopes.
    pub policy_hashes: BTreeSet<Hash>,
}

impl fmt::Display for ChainSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chain {}/{}/{}: batches: {}, tombstones: {}, records: {}, policy hashes: ",
            self.host, self.stream, self.chain, self.batches, self.tombstones, self.records
        )?;
        if self.policy_hashes.is_empty() {
            return write!(f, "-");
        }
        let hashes: Vec<String> = self.policy_hashes.iter().map(hex::encode).collect();
        write!(f, "{}", hashes.join(" "))
    }
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hosts: {}, chains: {}, batches: {}, tombstones: {}, records: {}, ",
            self.hosts, self.chains, self.batches, self.tombstones, self.records,
        )?;
        if let Some(n) = self.ledger_entries {
            write!(f, "ledger entries: {n}, ")?;
        }
        writeln!(f, "problems: {}", self.problems.len())?;
        if self.ledger_heads.len() > 1 {
            for (path, n, hash) in &self.ledger_heads {
                writeln!(
                    f,
                    "ledger head of {path}: entry {n} sha256 {}",
                    hex::encode(hash)
                )?;
            }
        } else if let Some((n, hash)) = self.ledger_head {
            writeln!(f, "ledger head: entry {n} sha256 {}", hex::encode(hash))?;
        }
        for c in &self.chain_summaries {
            writeln!(f, "{c}")?;
        }
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// One `accepted` entry, as far as verify needs it.
#[derive(Debug, Clone)]
struct Recorded {
    /// The ledger file that recorded it.
    path: String,
    line: u64,
    day: String,
    sha256: String,
    head_link: String,
}

/// What the ledger says about one chain.
#[derive(Debug, Default)]
struct LedgerChain {
    accepted: BTreeMap<u64, Recorded>,
    /// `(from, to, link, line)` of declared gaps whose statements verified.
    gaps: Vec<(u64, u64, Hash, u64)>,
    /// `(day, first, last)` removed by retention.
    retained: Vec<(String, u64, u64)>,
}

impl LedgerChain {
    fn retained_away(&self, seq: u64) -> bool {
        self.retained
            .iter()
            .any(|(_, f, t)| (*f..=*t).contains(&seq))
    }
}

type ChainId = (String, String, String);

/// Verifies the archive under `archive` against the public keys in `keys`, and its ledger
/// when there is one (whose signatures then need `store_key`, see [`verify_with`]).
pub fn verify(archive: &Path, keys: &Path) -> Report {
    verify_with(archive, keys, None)
}

/// [`verify`], checking the ledger's signatures against `store_key`. With a store key, a
/// missing ledger is a problem.
pub fn verify_with(archive: &Path, keys: &Path, store_key: Option<&VerifyingKey>) -> Report {
    verify_with_ledgers(archive, keys, store_key, &[custody::ledger_path(archive)])
}

/// [`verify_with`] against the given ledger files instead of the archive's own: several
/// store instances sharing one archive (`crate::verify_s3`) each keep a ledger. Every
/// ledger is checked on its own; a batch must be recorded as accepted in at least one, and
/// two ledgers recording one seq must agree on its bytes and day.
pub fn verify_with_ledgers(
    archive: &Path,
    keys: &Path,
    store_key: Option<&VerifyingKey>,
    ledgers: &[std::path::PathBuf],
) -> Report {
    let mut report = Report::default();
    let listing = match archive::list(archive) {
        Ok(l) => l,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    for path in &listing.unexpected {
        let quarantined = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(archive::QUARANTINE_SUFFIX));
        if quarantined {
            report.problems.push(format!(
                "{}: quarantined by the store at startup: in the archive but not in the custody ledger, and failing the checks ingest applies (alert archive_unrecorded_invalid); not part of its chain",
                path.display()
            ));
        } else {
            report.problems.push(format!(
                "{}: not part of the archive layout",
                path.display()
            ));
        }
    }
    let mut key_cache: HashMap<String, HashMap<String, VerifyingKey>> = HashMap::new();
    let mut ledger: Option<BTreeMap<ChainId, LedgerChain>> = None;
    for path in ledgers {
        if let Some(one) = read_ledger(path, keys, store_key, &mut key_cache, &mut report) {
            merge_ledger(ledger.get_or_insert_with(BTreeMap::new), one, &mut report);
        }
    }
    let mut hosts = BTreeSet::new();
    let mut seen = BTreeSet::new();
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
        let host_keys = key_cache
            .entry(chain.host.clone())
            .or_insert_with(|| load_keys(keys, &chain.host, &mut report.problems))
            .clone();
        let id = (
            chain.host.clone(),
            chain.stream.clone(),
            hex::encode(chain.chain_id),
        );
        let lc = ledger.as_ref().map(|l| l.get(&id).unwrap_or(&EMPTY));
        verify_chain(chain, &host_keys, lc, &mut report);
        seen.insert(id);
    }
    // Chains the ledger knows that the archive no longer holds at all.
    if let Some(ledger) = &ledger {
        for (id, lc) in ledger {
            if seen.contains(id) {
                continue;
            }
            for (seq, rec) in &lc.accepted {
                if !lc.retained_away(*seq) {
                    report.problems.push(format!(
                        "{}/{}/{}: seq {seq} recorded in the custody ledger (line {}) is missing from the archive",
                        id.0, id.1, id.2, rec.line
                    ));
                }
            }
        }
    }
    report.hosts = hosts.len() as u64;
    report
}

static EMPTY: LedgerChain = LedgerChain {
    accepted: BTreeMap::new(),
    gaps: Vec::new(),
    retained: Vec::new(),
};

/// Adds one ledger's chains to `into`: the same seq recorded by two ledgers must be the same
/// batch on the same day.
fn merge_ledger(
    into: &mut BTreeMap<ChainId, LedgerChain>,
    one: BTreeMap<ChainId, LedgerChain>,
    report: &mut Report,
) {
    for (id, lc) in one {
        let target = into.entry(id.clone()).or_default();
        for (seq, rec) in lc.accepted {
            match target.accepted.get(&seq) {
                None => {
                    target.accepted.insert(seq, rec);
                }
                Some(first) if first.sha256 == rec.sha256 && first.day == rec.day => {}
                Some(first) => report.problems.push(format!(
                    "{}: line {}: seq {seq} of {}/{}/{} was accepted as another batch (or on another day) in {} line {}",
                    rec.path, rec.line, id.0, id.1, id.2, first.path, first.line
                )),
            }
        }
        target.gaps.extend(lc.gaps);
        target.retained.extend(lc.retained);
    }
}

fn read_ledger(
    path: &Path,
    keys: &Path,
    store_key: Option<&VerifyingKey>,
    key_cache: &mut HashMap<String, HashMap<String, VerifyingKey>>,
    report: &mut Report,
) -> Option<BTreeMap<ChainId, LedgerChain>> {
    if !path.exists() {
        if store_key.is_some() {
            report
                .problems
                .push(format!("{}: the custody ledger is missing", path.display()));
            return Some(BTreeMap::new());
        }
        return None;
    }
    let read = match custody::read(path, store_key) {
        Ok(r) => r,
        Err(e) => {
            report.problems.push(e.to_string());
            return Some(BTreeMap::new());
        }
    };
    report.problems.extend(read.problems);
    report.ledger_entries = Some(report.ledger_entries.unwrap_or(0) + read.entries.len() as u64);
    report.ledger_head = read.head;
    if let Some((n, hash)) = read.head {
        report
            .ledger_heads
            .push((path.display().to_string(), n, hash));
    }
    let p = path.display();
    let mut out: BTreeMap<ChainId, LedgerChain> = BTreeMap::new();
    let id = |c: &custody::ChainRef| (c.host.clone(), c.stream.clone(), c.chain.clone());
    for (line, entry) in read.entries {
        match entry.event {
            Event::Accepted {
                chain,
                seq,
                day,
                envelope_sha256,
                head_link,
                ..
            } => {
                let rec = Recorded {
                    path: p.to_string(),
                    line,
                    day,
                    sha256: envelope_sha256,
                    head_link,
                };
                if let Some(first) = out.entry(id(&chain)).or_default().accepted.insert(seq, rec) {
                    report.problems.push(format!(
                        "{p}: line {line}: seq {seq} of {}/{}/{} was already accepted at line {}",
                        chain.host, chain.stream, chain.chain, first.line
                    ));
                }
            }
            Event::Gap {
                chain,
                from,
                to,
                link,
                key_id,
                statement,
                statement_sig,
                ..
            } => {
                let host_keys = key_cache
                    .entry(chain.host.clone())
                    .or_insert_with(|| load_keys(keys, &chain.host, &mut report.problems));
                let checked = crate::receive::gap::decode_parts(&statement, &statement_sig)
                    .ok()
                    .filter(|g| {
                        let s = &g.statement;
                        s.host == chain.host
                            && s.stream == chain.stream
                            && s.chain == chain.chain
                            && (s.from, s.to) == (from, to)
                            && s.link == link
                            && s.key_id == key_id
                            && host_keys.get(&key_id).is_some_and(|k| g.verify(k))
                    });
                match checked {
                    Some(g) => out
                        .entry(id(&chain))
                        .or_default()
                        .gaps
                        .push((from, to, g.link, line)),
                    None => report.problems.push(format!(
                        "{p}: line {line}: the gap statement is not signed by an enrolled key of host {} or does not match the entry",
                        chain.host
                    )),
                }
            }
            Event::RetentionDeleted {
                chain,
                day,
                first_seq,
                last_seq,
                ..
            } => out
                .entry(id(&chain))
                .or_default()
                .retained
                .push((day, first_seq, last_seq)),
            _ => {}
        }
    }
    Some(out)
}

/// Every key of `host` by key id, revoked ones included.
fn load_keys(keys: &Path, host: &str, problems: &mut Vec<String>) -> HashMap<String, VerifyingKey> {
    match keys::trusted_keys(keys, host) {
        Ok(list) if !list.is_empty() => list.into_iter().map(|k| (k.key_id, k.key)).collect(),
        Ok(_) => {
            problems.push(format!(
                "host {host}: no enrolled key in {}, its batches cannot be authenticated",
                keys.display()
            ));
            HashMap::new()
        }
        Err(e) => {
            problems.push(format!(
                "host {host}: no usable key, its batches cannot be authenticated: {e}"
            ));
            HashMap::new()
        }
    }
}

/// Whether seqs `from..=to` may be absent, and the link the batch after them must carry.
enum Hole {
    Problem,
    Allowed(Option<Hash>),
}

fn explain_hole(lc: Option<&LedgerChain>, from: u64, to: u64) -> Hole {
    let Some(lc) = lc else {
        return Hole::Problem;
    };
    if let Some((_, _, link, _)) = lc.gaps.iter().find(|(f, t, _, _)| (*f, *t) == (from, to)) {
        return Hole::Allowed(Some(*link));
    }
    if (from..=to).all(|s| lc.retained_away(s)) {
        let link = lc
            .accepted
            .get(&to)
            .and_then(|r| hex::decode(&r.head_link).ok())
            .and_then(|v| v.try_into().ok());
        return Hole::Allowed(link);
    }
    Hole::Problem
}

fn verify_chain(
    chain: &ChainListing,
    host_keys: &HashMap<String, VerifyingKey>,
    lc: Option<&LedgerChain>,
    report: &mut Report,
) {
    // The link the next seq must carry, when known.
    let mut prev: Option<(u64, Hash)> = None;
    let mut expected_seq = 1u64;
    let mut archived = BTreeSet::new();
    let label = chain.label();
    let mut summary = ChainSummary {
        host: chain.host.clone(),
        stream: chain.stream.clone(),
        chain: hex::encode(chain.chain_id),
        ..ChainSummary::default()
    };
    for b in &chain.batches {
        let (seq, p) = (b.seq, b.path.display());
        if seq > expected_seq {
            match explain_hole(lc, expected_seq, seq - 1) {
                Hole::Allowed(link) => {
                    prev = link.map(|l| (seq - 1, l));
                }
                Hole::Problem => {
                    let missing = if seq - expected_seq == 1 {
                        format!("seq {expected_seq} is missing")
                    } else {
                        format!("seqs {expected_seq}..={} are missing", seq - 1)
                    };
                    report
                        .problems
                        .push(format!("{label}: {missing} before {p}"));
                }
            }
        } else if seq < expected_seq {
            report.problems.push(format!(
                "{p}: seq {seq} appears again (or is not a valid seq)"
            ));
        }
        expected_seq = seq.saturating_add(1);
        archived.insert(seq);

        let bytes = match std::fs::read(&b.path) {
            Ok(b) => b,
            Err(e) => {
                report.problems.push(format!("{p}: cannot read: {e}"));
                prev = None;
                continue;
            }
        };
        let mut found = Vec::new();
        if let Some(lc) = lc {
            match lc.accepted.get(&seq) {
                None => found.push("not recorded in the custody ledger as accepted".to_string()),
                Some(rec) => {
                    let sha = hex::encode(crate::envelope::sha256(&bytes));
                    if rec.sha256 != sha {
                        found.push(format!(
                            "differs from the batch the custody ledger recorded at line {}",
                            rec.line
                        ));
                    }
                    if rec.day != b.day {
                        found.push(format!(
                            "the custody ledger (line {}) recorded it on day {}",
                            rec.line, rec.day
                        ));
                    }
                }
            }
        }
        let env = match Envelope::decode(&bytes) {
            Ok(env) => env,
            Err(e) => {
                found.push(format!("does not decode: {e}"));
                report
                    .problems
                    .extend(found.into_iter().map(|msg| format!("{p}: {msg}")));
                prev = None;
                continue;
            }
        };
        let h = &env.header;
        match h.kind {
            Kind::Data => {
                report.batches += 1;
                summary.batches += 1;
                summary.policy_hashes.insert(h.policy_hash);
            }
            Kind::Tombstone => {
                report.tombstones += 1;
                summary.tombstones += 1;
            }
        }
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
        if !host_keys.is_empty() {
            match host_keys.get(&h.key_id) {
                Some(key) => {
                    if let Err(e) = env.verify(key) {
                        found.push(e.to_string());
                    }
                }
                None => found.push(format!(
                    "key id {} is not an enrolled key of host {}",
                    h.key_id, chain.host
                )),
            }
        }
        match check_payload(&env, h.decompressed_len) {
            Ok(n) if found.is_empty() => {
                report.records += n;
                summary.records += n;
            }
            Ok(_) => {}
            Err(e) => found.push(e.to_string()),
        }
        report
            .problems
            .extend(found.into_iter().map(|msg| format!("{p}: {msg}")));
        prev = Some((seq, env.next_link()));
    }
    report.chain_summaries.push(summary);
    if let Some(lc) = lc {
        for (seq, rec) in &lc.accepted {
            if !archived.contains(seq) && !lc.retained_away(*seq) {
                report.problems.push(format!(
                    "{label}: seq {seq} recorded in the custody ledger (line {}, day {}) is missing from the archive",
                    rec.line, rec.day
                ));
            }
        }
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
        let policy = "03".repeat(32);
        assert_eq!(
            r.to_string(),
            format!(
                "hosts: 2, chains: 2, batches: 4, tombstones: 1, records: 5, problems: 0\n\
                 chain web-1/default/{}: batches: 3, tombstones: 1, records: 4, policy hashes: {policy}\n\
                 chain web-2/audit/{}: batches: 1, tombstones: 0, records: 1, policy hashes: {policy}\n",
                "01".repeat(16),
                "02".repeat(16)
            )
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

#[cfg(test)]
mod ledger_tests {
    use super::*;
    use crate::custody::Ledger;
    use crate::receive::gap::GapStatement;
    use crate::receive::test_support::Chain;
    use crate::receive::{FsArchive, Ingest, Peer};
    use crate::telemetry::ReceiverMetrics;
    use bytes::Bytes;
    use ed25519_dalek::SigningKey;
    use std::path::PathBuf;
    use std::sync::Arc;

    struct Fx {
        archive: tempfile::TempDir,
        keys: tempfile::TempDir,
        store_key: SigningKey,
        ingest: Arc<Ingest<FsArchive>>,
        a: Chain,
    }

    async fn store(archive: &Path, keys: &Path, key: &SigningKey) -> Arc<Ingest<FsArchive>> {
        let (ledger, entries) = Ledger::open(archive, key.clone()).unwrap();
        Arc::new(
            Ingest::new(
                FsArchive::open(archive).unwrap(),
                keys.into(),
                1 << 20,
                ReceiverMetrics::default(),
                Some((Arc::new(ledger), entries)),
            )
            .await
            .unwrap(),
        )
    }

    /// web-1 with four batches through a store with a ledger.
    async fn fixture() -> Fx {
        let archive = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let store_key = keys::generate();
        let ingest = store(archive.path(), keys.path(), &store_key).await;
        let mut a = Chain::new("web-1", "default", [1; 16]);
        a.enroll(keys.path());
        for i in 0..4 {
            let b = a.next_data(&[&format!("m{i}")]);
            ingest
                .ingest(Bytes::from(b), &Peer::default())
                .await
                .unwrap();
        }
        Fx {
            archive,
            keys,
            store_key,
            ingest,
            a,
        }
    }

    impl Fx {
        fn run(&self) -> Report {
            verify_with(
                self.archive.path(),
                self.keys.path(),
                Some(&self.store_key.verifying_key()),
            )
        }
        fn file(&self, seq: u64) -> PathBuf {
            self.a
                .dir(self.archive.path())
                .join(archive::batch_file_name(seq))
        }
        fn ledger_lines(&self) -> Vec<String> {
            std::fs::read_to_string(custody::ledger_path(self.archive.path()))
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        }
    }

    fn has(r: &Report, needle: &str) -> bool {
        r.problems.iter().any(|p| p.contains(needle))
    }

    #[tokio::test]
    async fn a_store_with_a_ledger_verifies_clean() {
        let fx = fixture().await;
        let r = fx.run();
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.batches, 4);
        // started + 4 accepted
        assert_eq!(r.ledger_entries, Some(5));
        assert!(r.to_string().contains("ledger head: entry 5"), "{r}");
    }

    #[tokio::test]
    async fn deleting_the_newest_batch_or_the_tail_is_found() {
        let fx = fixture().await;
        std::fs::remove_file(fx.file(4)).unwrap();
        let r = fx.run();
        assert_eq!(r.problems.len(), 1, "{r}");
        assert!(
            has(&r, "seq 4 recorded in the custody ledger (line 5"),
            "{r}"
        );
        std::fs::remove_file(fx.file(3)).unwrap();
        let r = fx.run();
        assert_eq!(r.problems.len(), 2, "{r}");
        assert!(has(&r, "seq 3 recorded"), "{r}");
        // The whole chain.
        std::fs::remove_dir_all(fx.archive.path().join("web-1")).unwrap();
        let r = fx.run();
        assert_eq!(r.problems.len(), 4, "{r}");
    }

    #[tokio::test]
    async fn a_truncated_file_and_a_slipped_in_batch_are_found() {
        let fx = fixture().await;
        let bytes = std::fs::read(fx.file(2)).unwrap();
        std::fs::remove_file(fx.file(2)).unwrap();
        std::fs::write(fx.file(2), &bytes[..bytes.len() - 10]).unwrap();
        let r = fx.run();
        assert!(
            has(
                &r,
                "differs from the batch the custody ledger recorded at line 3"
            ),
            "{r}"
        );
        std::fs::write(fx.file(2), &bytes).unwrap();
        assert!(fx.run().is_clean());
        // A validly signed batch 5 the store never accepted (written behind its back).
        let mut a = Chain::new("web-1", "default", [1; 16]);
        a.seq = fx.a.seq;
        a.link = fx.a.link;
        std::fs::write(fx.file(5), a.next_data(&["forged"])).unwrap();
        let r = fx.run();
        assert_eq!(r.problems.len(), 1, "{r}");
        assert!(has(&r, "not recorded in the custody ledger"), "{r}");
    }

    #[tokio::test]
    async fn an_edited_ledger_entry_is_found_with_its_line() {
        let fx = fixture().await;
        let mut lines = fx.ledger_lines();
        lines[2] = lines[2].replace("\"records\":1", "\"records\":2");
        std::fs::write(
            custody::ledger_path(fx.archive.path()),
            lines.join("\n") + "\n",
        )
        .unwrap();
        let r = fx.run();
        assert!(has(&r, "line 3: signature"), "{r}");
        assert!(has(&r, "line 4: prev"), "{r}");
    }

    #[tokio::test]
    async fn the_ledger_needs_the_store_key_and_must_exist_when_given() {
        let fx = fixture().await;
        let r = verify(fx.archive.path(), fx.keys.path());
        assert!(has(&r, "--store-key"), "{r}");
        std::fs::remove_dir_all(fx.archive.path().join(archive::CUSTODY_DIR)).unwrap();
        let r = fx.run();
        assert!(has(&r, "the custody ledger is missing"), "{r}");
    }

    #[tokio::test]
    async fn a_crash_before_recording_is_recovered_into_the_ledger() {
        let fx = fixture().await;
        // Seq 5 reaches the archive but not the ledger (as if the store died in between).
        let mut a = Chain::new("web-1", "default", [1; 16]);
        a.seq = fx.a.seq;
        a.link = fx.a.link;
        std::fs::write(fx.file(5), a.next_data(&["late"])).unwrap();
        assert!(!fx.run().is_clean());
        let Fx {
            archive: dir,
            keys: key_dir,
            store_key,
            ingest,
            ..
        } = fx;
        drop(ingest);
        let restarted = store(dir.path(), key_dir.path(), &store_key).await;
        let r = verify_with(dir.path(), key_dir.path(), Some(&store_key.verifying_key()));
        assert!(r.is_clean(), "{r}");
        assert!(fx_lines(dir.path())
            .iter()
            .any(|l| l.contains("\"seq\":5") && l.contains("\"recovered\":true")));
        // The chain goes on from the recovered batch.
        let b6 = a.next_data(&["six"]);
        assert_eq!(
            restarted
                .ingest(Bytes::from(b6), &Peer::default())
                .await
                .unwrap(),
            crate::receive::Accepted::Stored { seq: 6 }
        );
    }

    #[tokio::test]
    async fn an_invalid_unrecorded_batch_is_quarantined_not_recorded() {
        // Seq 5 written behind the store's back: signed by an unenrolled key, then (second
        // case) by the host's key but not continuing the chain.
        let forgeries: [fn(&Fx) -> Vec<u8>; 2] = [
            |fx| {
                let mut f = Chain::new("web-1", "default", [1; 16]);
                f.key = SigningKey::from_bytes(&[7; 32]);
                f.seq = fx.a.seq;
                f.link = [3; 32];
                f.next_data(&["forged"])
            },
            |fx| {
                let mut f = Chain::new("web-1", "default", [1; 16]);
                f.seq = fx.a.seq;
                f.link = [3; 32];
                f.next_data(&["replayed"])
            },
        ];
        for forge in forgeries {
            let fx = fixture().await;
            std::fs::write(fx.file(5), forge(&fx)).unwrap();
            let Fx {
                archive: dir,
                keys: key_dir,
                store_key,
                ingest,
                mut a,
            } = fx;
            drop(ingest);
            let restarted = store(dir.path(), key_dir.path(), &store_key).await;
            assert!(!fx_lines(dir.path()).iter().any(|l| l.contains("\"seq\":5")));
            let alerts = crate::telemetry::render(&restarted.metrics().registry());
            assert!(
                alerts.contains("custody_alerts_total{kind=\"archive_unrecorded_invalid\"} 1"),
                "{alerts}"
            );
            // The host's real seq 5 is stored; the forgery stays aside, reported by verify.
            let b5 = a.next_data(&["five"]);
            assert_eq!(
                restarted
                    .ingest(Bytes::from(b5), &Peer::default())
                    .await
                    .unwrap(),
                crate::receive::Accepted::Stored { seq: 5 }
            );
            let r = verify_with(dir.path(), key_dir.path(), Some(&store_key.verifying_key()));
            assert_eq!(r.problems.len(), 1, "{r}");
            assert!(has(&r, "quarantined by the store at startup"), "{r}");
            assert_eq!(r.batches, 5, "{r}");
        }
    }

    fn fx_lines(archive: &Path) -> Vec<String> {
        std::fs::read_to_string(custody::ledger_path(archive))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[tokio::test]
    async fn a_store_restarted_after_the_newest_batch_was_deleted_keeps_the_ledger_head() {
        let fx = fixture().await;
        std::fs::remove_file(fx.file(4)).unwrap();
        let restarted = store(fx.archive.path(), fx.keys.path(), &fx.store_key).await;
        // A different seq 4 cannot take the deleted one's place.
        let mut fork = Chain::new("web-1", "default", [1; 16]);
        for _ in 0..3 {
            fork.next_data(&["x"]);
        }
        fork.seq = 3;
        fork.link = {
            let b3 = std::fs::read(fx.file(3)).unwrap();
            Envelope::decode(&b3).unwrap().next_link()
        };
        let other4 = fork.next_data(&["replacement"]);
        let r = restarted
            .ingest(Bytes::from(other4), &Peer::default())
            .await;
        assert!(r.is_err(), "{r:?}");
        assert!(!fx.file(4).exists());
    }

    #[tokio::test]
    async fn a_declared_gap_is_recorded_and_verifies_and_an_undeclared_one_does_not() {
        let fx = fixture().await;
        let mut a = Chain::new("web-1", "default", [1; 16]);
        a.seq = fx.a.seq;
        a.link = fx.a.link;
        // Seqs 5 and 6 are lost on the host; it goes on with 7.
        a.next_data(&["lost5"]);
        a.next_data(&["lost6"]);
        let link6 = a.link;
        let b7 = a.next_data(&["seven"]);
        let refused = fx
            .ingest
            .ingest(Bytes::from(b7.clone()), &Peer::default())
            .await;
        assert!(refused.is_err());
        let statement = GapStatement {
            host: "web-1".into(),
            stream: "default".into(),
            chain: hex::encode([1u8; 16]),
            key_id: keys::key_id(&a.key.verifying_key()),
            from: 5,
            to: 6,
            link: hex::encode(link6),
            reason: "buffer wiped".into(),
        };
        let body = serde_json::to_vec(&statement.sign(&a.key)).unwrap();
        assert!(fx
            .ingest
            .declare_gap(Bytes::from(body.clone()), &Peer::default())
            .await
            .unwrap());
        assert!(!fx
            .ingest
            .declare_gap(Bytes::from(body), &Peer::default())
            .await
            .unwrap());
        fx.ingest
            .ingest(Bytes::from(b7), &Peer::default())
            .await
            .unwrap();
        let r = fx.run();
        assert!(r.is_clean(), "{r}");
        // A statement signed by another key is refused.
        let mut forged = statement.clone();
        forged.from = 8;
        forged.to = 9;
        let body = serde_json::to_vec(&forged.sign(&keys::generate())).unwrap();
        assert!(fx
            .ingest
            .declare_gap(Bytes::from(body), &Peer::default())
            .await
            .is_err());
        // Remove the gap entry from the ledger: the hole is a problem again (and the
        // ledger's chain breaks where the entry was).
        let lines: Vec<String> = fx
            .ledger_lines()
            .into_iter()
            .filter(|l| !l.contains("\"kind\":\"gap\""))
            .collect();
        std::fs::write(
            custody::ledger_path(fx.archive.path()),
            lines.join("\n") + "\n",
        )
        .unwrap();
        let r = fx.run();
        assert!(has(&r, "seqs 5..=6 are missing"), "{r}");
    }
}
