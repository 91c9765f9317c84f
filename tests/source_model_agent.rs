//! Model-based test of the file source with the real binaries: random sequences of
//! append, rename rotation, copytruncate, deletion, creation, `kill -9` of the agent and
//! restarts, against a model of what must arrive. The in-process counterpart, with many
//! more cases, is `source_model.rs`.
//!
//! The model expects only what docs/SOURCE.md guarantees:
//! - every line written to a file is shipped exactly once, whatever was renamed (to
//!   names the glob still matches), copied, truncated or crashed in between;
//! - lines written to a file after logrotate's copy and before its truncation (the
//!   copytruncate loss window) are shipped at most once;
//! - a file is deleted only once all its lines have arrived (a file deleted before it was
//!   ever opened is unreadable by any tailer).

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Op {
    Append {
        slot: usize,
        n: usize,
    },
    Rotate {
        slot: usize,
    },
    /// Copy, `between` lines appended to the original, truncation.
    CopyTruncate {
        slot: usize,
        between: usize,
    },
    DeleteRotated,
    Create {
        n: usize,
    },
    Kill9,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..30usize).prop_map(|(slot, n)| Op::Append { slot, n }),
        2 => (0..2usize).prop_map(|slot| Op::Rotate { slot }),
        2 => (0..2usize, 0..3usize).prop_map(|(slot, between)| Op::CopyTruncate { slot, between }),
        1 => Just(Op::DeleteRotated),
        1 => (1..20usize).prop_map(|n| Op::Create { n }),
        2 => Just(Op::Kill9),
        2 => Just(Op::Restart),
    ]
}

struct Sim {
    w: World,
    _store: Proc,
    agent: Option<Proc>,
    /// Lines that must arrive exactly once.
    required: Vec<String>,
    /// Lines that may be lost (the copytruncate window) but never arrive twice.
    maybe: HashSet<String>,
    /// Lines of each file on disk, by path.
    files: HashMap<PathBuf, Vec<String>>,
    next_line: usize,
    next_name: usize,
}

impl Sim {
    fn new() -> Sim {
        let mut w = World::new();
        w.sources = format!(
            "[[sources]]\nname = \"model\"\ninclude = [\"{}/*.log*\"]\npoll_interval = \"100ms\"\npartial_line_timeout = \"500ms\"\nrotate_wait = \"500ms\"\nmax_open_files = 3\n",
            w.logs().display()
        );
        let store = w.start_receiver();
        let agent = Some(w.start_agent());
        Sim {
            w,
            _store: store,
            agent,
            required: Vec::new(),
            maybe: HashSet::new(),
            files: HashMap::new(),
            next_line: 0,
            next_name: 0,
        }
    }

    fn write(&mut self, path: &Path, n: usize) -> Vec<String> {
        let mut text = String::new();
        let mut written = Vec::new();
        for _ in 0..n {
            let line = format!("line {:06} model payload", self.next_line);
            self.next_line += 1;
            text.push_str(&line);
            text.push('\n');
            written.push(line);
        }
        open_append(path).write_all(text.as_bytes()).unwrap();
        self.files
            .entry(path.to_path_buf())
            .or_default()
            .extend(written.iter().cloned());
        written
    }

    fn append(&mut self, slot: usize, n: usize) {
        let p = self.w.logs().join(format!("s{slot}.log"));
        let lines = self.write(&p, n);
        self.required.extend(lines);
    }

    fn create(&mut self, n: usize) {
        self.next_name += 1;
        let p = self.w.logs().join(format!("n{}.log", self.next_name));
        let lines = self.write(&p, n);
        self.required.extend(lines);
    }

    fn rotate(&mut self, slot: usize) {
        let from = self.w.logs().join(format!("s{slot}.log"));
        if !from.exists() {
            return;
        }
        self.next_name += 1;
        let to = self
            .w
            .logs()
            .join(format!("s{slot}.log.{}", self.next_name));
        std::fs::rename(&from, &to).unwrap();
        let lines = self.files.remove(&from).unwrap_or_default();
        self.files.insert(to, lines);
    }

    fn copytruncate(&mut self, slot: usize, between: usize) {
        let from = self.w.logs().join(format!("s{slot}.log"));
        if std::fs::metadata(&from).map_or(true, |m| m.len() == 0) {
            return;
        }
        self.next_name += 1;
        let to = self
            .w
            .logs()
            .join(format!("s{slot}.log.c{}", self.next_name));
        std::fs::copy(&from, &to).unwrap();
        let copied = std::mem::take(self.files.get_mut(&from).unwrap());
        let lost = self.write(&from, between);
        self.maybe.extend(lost);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&from)
            .unwrap()
            .set_len(0)
            .unwrap();
        self.files.insert(from, Vec::new());
        self.files.insert(to, copied);
    }

    fn arrived(&self) -> HashMap<String, usize> {
        let mut count = HashMap::new();
        for r in self.w.records() {
            *count
                .entry(r["body"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        count
    }

    /// Deletes the oldest rotated file once all its lines have arrived (agent running).
    fn delete_rotated(&mut self) {
        if self.agent.is_none() {
            return;
        }
        let Some(path) = self
            .files
            .keys()
            .filter(|p| !p.to_string_lossy().ends_with(".log"))
            .min()
            .cloned()
        else {
            return;
        };
        let lines = self.files[&path].clone();
        wait_until(LONG, &format!("lines of {path:?} arrived"), || {
            let got = self.arrived();
            lines.iter().all(|l| got.contains_key(l))
        });
        std::fs::remove_file(&path).unwrap();
        self.files.remove(&path);
    }

    fn kill9(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill9();
        }
    }

    fn restart(&mut self) {
        if self.agent.is_none() {
            self.agent = Some(self.w.start_agent());
        }
    }

    fn check(mut self) -> Result<(), TestCaseError> {
        self.restart();
        let deadline = Instant::now() + LONG;
        loop {
            let got = self.arrived();
            let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
            prop_assert!(twice.is_empty(), "shipped twice: {:?}", twice);
            if self.required.iter().all(|l| got.contains_key(l)) {
                break;
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = self
                    .required
                    .iter()
                    .filter(|l| !got.contains_key(*l))
                    .take(5)
                    .collect();
                return Err(TestCaseError::fail(format!(
                    "never arrived: {missing:?}; agent logs: {}",
                    self.w.agent_logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Rotation waits, rescans and copy holds pass: nothing arrives late or twice.
        std::thread::sleep(Duration::from_millis(1500));
        let got = self.arrived();
        for (line, n) in &got {
            prop_assert_eq!(*n, 1, "line {:?} arrived {} times", line, n);
            prop_assert!(
                self.maybe.contains(line) || self.required.contains(line),
                "unexpected record {:?}",
                line
            );
        }
        let required: HashSet<&String> = self.required.iter().collect();
        prop_assert_eq!(
            got.keys().filter(|l| required.contains(l)).count(),
            self.required.len()
        );
        prop_assert!(
            !self.w.agent_logs().contains("model payload"),
            "agent logs hold line content"
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 6,
        max_shrink_iters: 8,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/source_model_agent.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_rotation_truncation_deletion_and_kill9_ship_every_guaranteed_line_once(
        ops in proptest::collection::vec(op(), 6..12)
    ) {
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("ops: {ops:?}");
        }
        let mut sim = Sim::new();
        for op in ops {
            match op {
                Op::Append { slot, n } => sim.append(slot, n),
                Op::Rotate { slot } => sim.rotate(slot),
                Op::CopyTruncate { slot, between } => sim.copytruncate(slot, between),
                Op::DeleteRotated => sim.delete_rotated(),
                Op::Create { n } => sim.create(n),
                Op::Kill9 => sim.kill9(),
                Op::Restart => sim.restart(),
            }
            // Let the agent look between some operations, not between all.
            std::thread::sleep(Duration::from_millis(50));
        }
        sim.check()?;
    }
}
