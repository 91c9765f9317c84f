use super::*;

fn read_event(who: &str) -> Event {
    Event::Read {
        who: who.into(),
        role: "auditor".into(),
        via: "api".into(),
        reason: "INC-1".into(),
        what: "host=web-1".into(),
        allowed: true,
        records: 3,
    }
}

fn fixture(entries: usize) -> (tempfile::TempDir, SigningKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = keys::generate();
    let (ledger, old) = Ledger::open(dir.path(), key.clone()).unwrap();
    assert!(old.is_empty());
    for i in 0..entries {
        ledger.append(read_event(&format!("user{i}"))).unwrap();
    }
    (dir, key)
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(ledger_path(dir))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(ledger_path(dir), text).unwrap();
}

#[test]
fn a_written_ledger_reads_back_clean_and_chained() {
    let (dir, key) = fixture(3);
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.entries.len(), 4);
    assert_eq!(r.head.unwrap().0, 4);
    assert_eq!(r.store_key_id, Some(keys::key_id(&key.verifying_key())));
    assert!(matches!(r.entries[0].1.event, Event::Started { .. }));
    assert_eq!(r.entries[3].1.event, read_event("user2"));
    // Reopening continues the chain and reports what is there.
    let (ledger, old) = Ledger::open(dir.path(), key.clone()).unwrap();
    assert_eq!(old.len(), 4);
    ledger.append(read_event("again")).unwrap();
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.entries.len(), 6);
}

#[test]
fn an_edited_entry_is_found_at_its_line() {
    let (dir, key) = fixture(3);
    let mut l = lines(dir.path());
    l[2] = l[2].replace("user1", "userX");
    write_lines(dir.path(), &l);
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert!(
        r.problems.iter().any(|p| p.contains("line 3: signature")),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.contains("line 4: prev")),
        "{:?}",
        r.problems
    );
}

#[test]
fn a_re_signed_edit_still_breaks_the_hash_chain() {
    // Even someone holding the store key cannot edit an entry without every later `prev`
    // changing: here the edited entry is re-signed, the next line's prev no longer matches.
    let (dir, key) = fixture(3);
    let mut l = lines(dir.path());
    let (mut entry, _) = parse_line(&l[1], None).unwrap();
    entry.event = read_event("someone-else");
    l[1] = encode_line(&entry, &key).0.trim_end().to_string();
    write_lines(dir.path(), &l);
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].contains("line 3: prev"), "{:?}", r.problems);
}

#[test]
fn removed_and_reordered_entries_are_found() {
    let (dir, key) = fixture(4);
    let mut l = lines(dir.path());
    l.remove(2);
    write_lines(dir.path(), &l);
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("line 3: entry number 4")),
        "{:?}",
        r.problems
    );
    let (dir, key) = fixture(4);
    let mut l = lines(dir.path());
    l.swap(1, 2);
    write_lines(dir.path(), &l);
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert!(r.problems.len() >= 2, "{:?}", r.problems);
}

#[test]
fn another_key_and_a_missing_key_are_problems() {
    let (dir, _key) = fixture(1);
    let other = keys::generate();
    let r = read(&ledger_path(dir.path()), Some(&other.verifying_key())).unwrap();
    assert!(r
        .problems
        .iter()
        .all(|p| p.contains("signature") || p.contains("names store key")));
    assert!(r.problems.len() >= 2);
    let r = read(&ledger_path(dir.path()), None).unwrap();
    assert_eq!(r.problems.len(), 1);
    assert!(r.problems[0].contains("--store-key"));
    // The store refuses to continue a ledger under another key.
    let err = Ledger::open(dir.path(), other).unwrap_err();
    assert!(matches!(err, LedgerError::WrongKey { .. }), "{err}");
}

#[test]
fn a_torn_tail_is_cut_off_and_recorded() {
    let (dir, key) = fixture(2);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(ledger_path(dir.path()))
        .unwrap();
    f.write_all(b"{\"entry\":{\"n\":4,\"pr").unwrap();
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert!(r.problems.iter().any(|p| p.contains("incomplete")));
    let (_ledger, old) = Ledger::open(dir.path(), key.clone()).unwrap();
    assert_eq!(old.len(), 3);
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    match &r.entries.last().unwrap().1.event {
        Event::Started { torn_tail, .. } => assert_eq!(torn_tail.as_ref().unwrap().bytes, 19),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_local_tool_and_the_store_append_to_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let key = keys::generate();
    let key_dir = tempfile::tempdir().unwrap();
    let (secret, _) = keys::write_pair(key_dir.path(), &key).unwrap();
    let (ledger, _) = Ledger::open(dir.path(), key.clone()).unwrap();
    ledger.append(read_event("store")).unwrap();
    append_local(dir.path(), &secret, read_event("local")).unwrap();
    ledger.append(read_event("store-again")).unwrap();
    let r = read(&ledger_path(dir.path()), Some(&key.verifying_key())).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let who: Vec<_> = r
        .entries
        .iter()
        .filter_map(|(_, e)| match &e.event {
            Event::Read { who, .. } => Some(who.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(who, ["store", "local", "store-again"]);
}
