//! Discovery: which files the sources' globs match right now, by identity.
//!
//! Each include glob is walked from its static prefix (the directories before its first
//! glob metacharacter), only as deep as the glob can reach, following symlinks. A file
//! belongs to the first source (in config order) whose include globs match the path it was
//! found under and whose exclude globs do not. A file reached under several paths (a symlink
//! and its target) is reported once, under the first path in walk order.
//!
//! A symlink is followed only when root owns it or its owner owns what it points to (as
//! the kernel's `fs.protected_symlinks` reasons): the agent usually runs as root, and
//! whoever may write into a log directory could otherwise link a file only root may read
//! (`/etc/shadow`, another user's home) into the glob and have it shipped. Kubernetes'
//! `/var/log/containers` links, made by the kubelet (root), are followed as before. A
//! symlink refused this way is reported as a walk problem (logged once, counted).

use super::{FileId, SourceError};
use crate::config::SourceConfig;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use notify::RecursiveMode;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file matched by a source.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub id: FileId,
    pub source: usize,
    pub path: PathBuf,
    /// Size when found.
    pub len: u64,
    /// Last modification when found.
    pub modified: Option<std::time::SystemTime>,
}

/// A directory to walk (and watch), and how deep below it globs can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalkRoot {
    pub dir: PathBuf,
    /// `None`: unlimited (the glob has `**`).
    pub max_depth: Option<usize>,
}

impl WalkRoot {
    pub(crate) fn watch_mode(&self) -> RecursiveMode {
        match self.max_depth {
            Some(d) if d <= 1 => RecursiveMode::NonRecursive,
            _ => RecursiveMode::Recursive,
        }
    }
}

struct Matcher {
    include: GlobSet,
    exclude: GlobSet,
}

pub(crate) struct Discovery {
    matchers: Vec<Matcher>,
    roots: Vec<WalkRoot>,
}

/// A walk error worth reporting (not "the prefix directory does not exist yet").
#[derive(Debug)]
pub(crate) struct WalkProblem {
    pub path: PathBuf,
    pub error: String,
}

impl Discovery {
    pub(crate) fn new(sources: &[SourceConfig]) -> Result<Self, SourceError> {
        let mut matchers = Vec::with_capacity(sources.len());
        let mut roots: Vec<WalkRoot> = Vec::new();
        for s in sources {
            matchers.push(Matcher {
                include: glob_set(&s.include)?,
                exclude: glob_set(&s.exclude)?,
            });
            for g in &s.include {
                let root = static_prefix(g);
                match roots.iter_mut().find(|r| r.dir == root.dir) {
                    Some(r) => {
                        r.max_depth = match (r.max_depth, root.max_depth) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            _ => None,
                        }
                    }
                    None => roots.push(root),
                }
            }
        }
        Ok(Discovery { matchers, roots })
    }

    pub(crate) fn roots(&self) -> &[WalkRoot] {
        &self.roots
    }

    /// Which source a path belongs to, if any.
    pub(crate) fn source_of(&self, path: &Path) -> Option<usize> {
        self.matchers
            .iter()
            .position(|m| m.include.is_match(path) && !m.exclude.is_match(path))
    }

    /// Walks every root and returns the matched files, one per identity.
    pub(crate) fn scan(&self) -> (Vec<Found>, Vec<WalkProblem>) {
        let mut found: Vec<Found> = Vec::new();
        let mut seen: HashSet<FileId> = HashSet::new();
        let mut problems = Vec::new();
        for root in &self.roots {
            let mut walk = walkdir::WalkDir::new(&root.dir)
                .follow_links(true)
                .sort_by_file_name();
            if let Some(d) = root.max_depth {
                walk = walk.max_depth(d);
            }
            let mut it = walk.into_iter();
            while let Some(entry) = it.next() {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        let missing = e
                            .io_error()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
                        if !missing {
                            problems.push(WalkProblem {
                                path: e.path().unwrap_or(&root.dir).to_path_buf(),
                                error: e.to_string(),
                            });
                        }
                        continue;
                    }
                };
                if entry.path_is_symlink() {
                    if let Err(why) = trusted_link(entry.path()) {
                        problems.push(WalkProblem {
                            path: entry.path().to_path_buf(),
                            error: why,
                        });
                        if entry.file_type().is_dir() {
                            it.skip_current_dir();
                        }
                        continue;
                    }
                }
                if !entry.file_type().is_file() {
                    continue;
                }
                let Some(source) = self.source_of(entry.path()) else {
                    continue;
                };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) => {
                        problems.push(WalkProblem {
                            path: entry.path().to_path_buf(),
                            error: e.to_string(),
                        });
                        continue;
                    }
                };
                let id = FileId::of(&meta);
                if seen.insert(id) {
                    found.push(Found {
                        id,
                        source,
                        len: meta.len(),
                        modified: meta.modified().ok(),
                        path: entry.into_path(),
                    });
                }
            }
        }
        (found, problems)
    }
}

/// Whether the symlink at `link` may be followed: root owns it, or its owner owns its
/// target. The error says why not (owners only, never content).
fn trusted_link(link: &Path) -> Result<(), String> {
    let own = std::fs::symlink_metadata(link).map_err(|e| e.to_string())?;
    let target = std::fs::metadata(link).map_err(|e| e.to_string())?;
    if own.uid() == 0 || own.uid() == target.uid() {
        Ok(())
    } else {
        Err(format!(
            "symlink not followed: its owner (uid {}) does not own its target (uid {})",
            own.uid(),
            target.uid()
        ))
    }
}

fn glob_set(globs: &[String]) -> Result<GlobSet, SourceError> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let glob = GlobBuilder::new(g)
            // `*` stays within one path component, as in a shell; `**` crosses them.
            .literal_separator(true)
            .build()
            .map_err(|e| SourceError::Glob {
                glob: g.clone(),
                reason: e.to_string(),
            })?;
        b.add(glob);
    }
    b.build().map_err(|e| SourceError::Glob {
        glob: globs.join(", "),
        reason: e.to_string(),
    })
}

/// The directory before the first component holding a glob metacharacter, and how many
/// components below it the glob spans (`None` with `**`). A glob without metacharacters
/// names one file: its parent is walked one level deep.
pub(crate) fn static_prefix(glob: &str) -> WalkRoot {
    let is_meta = |c: &str| c.contains(['*', '?', '[', ']', '{', '}', '\\']);
    let comps: Vec<&str> = glob.split('/').filter(|c| !c.is_empty()).collect();
    let first_meta = comps
        .iter()
        .position(|c| is_meta(c))
        .unwrap_or(comps.len().saturating_sub(1));
    let mut dir = PathBuf::from("/");
    dir.extend(&comps[..first_meta]);
    let rest = &comps[first_meta..];
    let max_depth = if rest.iter().any(|c| c.contains("**")) {
        None
    } else {
        Some(rest.len().max(1))
    };
    WalkRoot { dir, max_depth }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_prefix_stops_at_the_first_metacharacter() {
        assert_eq!(
            static_prefix("/var/log/*.log"),
            WalkRoot {
                dir: "/var/log".into(),
                max_depth: Some(1)
            }
        );
        assert_eq!(
            static_prefix("/var/log/*/app/*.log"),
            WalkRoot {
                dir: "/var/log".into(),
                max_depth: Some(3)
            }
        );
        assert_eq!(
            static_prefix("/var/log/**/x.log"),
            WalkRoot {
                dir: "/var/log".into(),
                max_depth: None
            }
        );
        assert_eq!(
            static_prefix("/var/log/app.log"),
            WalkRoot {
                dir: "/var/log".into(),
                max_depth: Some(1)
            }
        );
        assert_eq!(static_prefix("/x{a,b}/y").dir, PathBuf::from("/"));
    }
}
