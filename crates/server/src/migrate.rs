//! Bringing a data dir of an earlier layout up to this build's, in place and
//! resumably: a node that crashes mid-way picks up where it stopped.
//!
//! Layouts (the `format` record in `meta`; absent means 1):
//! - 1: `data` keyed by the raw key (builds before anti-entropy); no `purged`
//!   keyspace, no disk epoch.
//! - 2: `data` keyed by ring token ‖ key, so an anti-entropy leaf is one scan.
//!
//! 1 → 2 runs in three phases, each recorded in `meta` (`migration`) before the
//! next starts, so no key is ever in two forms in one keyspace:
//! 1. copy: every record of `data`, re-keyed, into `data_migrating`, in atomic
//!    batches that also record the last key copied (the cursor);
//! 2. clear: empty `data` (every key in it is still of the old form);
//! 3. fill: move the records of `data_migrating` into `data`, each batch
//!    inserting and removing atomically; then `format` = 2.
//!
//! Records themselves (a version byte, then msgpack) are copied unchanged: a
//! layout-1 DVV set decodes as it is (its actors read as epoch 0, which no disk
//! epoch equals, so the node never mints their dots again). Each is decoded once on
//! the way, so a corrupt record stops the migration with its key named, before
//! anything of the old layout is lost.

use std::ops::Bound;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tracing::info;

use crate::storage::{FORMAT, data_key, decode_set, meta_u64};

/// Records per atomic batch, at most, and their bytes, about.
const BATCH: usize = 1024;
const PAGE_BYTES: usize = 16 << 20;
const STAGING: &str = "data_migrating";
const PHASE_COPY: u64 = 1;
const PHASE_CLEAR: u64 = 2;
const PHASE_FILL: u64 = 3;

/// Bring the data dir in `db` to [`FORMAT`]; a no-op when it is there.
pub fn migrate(db: &Database, data: &Keyspace, meta: &Keyspace, dir: &std::path::Path) -> anyhow::Result<()> {
    Run { db, data, meta, batch: BATCH, batches_left: u64::MAX }.migrate(dir)
}

/// One migration run; tests stop it after `batches_left` batches, as a crash would.
struct Run<'a> {
    db: &'a Database,
    data: &'a Keyspace,
    meta: &'a Keyspace,
    batch: usize,
    batches_left: u64,
}

impl Run<'_> {
    /// Commit one batch (or fail as if the process had stopped before it).
    fn commit(&mut self, b: fjall::OwnedWriteBatch) -> anyhow::Result<()> {
        if self.batches_left == 0 {
            anyhow::bail!("migration interrupted (test)");
        }
        self.batches_left -= 1;
        b.commit()?;
        Ok(())
    }

    fn migrate(&mut self, dir: &std::path::Path) -> anyhow::Result<()> {
        let (db, data, meta) = (self.db, self.data, self.meta);
        let format = meta_u64(meta, "format")?.unwrap_or(1);
        if format == FORMAT {
            if db.keyspace_exists(STAGING) {
                // Stopped after the last batch, before the staging keyspace went: it is empty.
                db.delete_keyspace(db.keyspace(STAGING, KeyspaceCreateOptions::default)?)?;
            }
            return Ok(());
        }
        if format > FORMAT {
            anyhow::bail!(
                "data dir {} has layout {format}, written by a newer build; this build reads layouts up to {FORMAT}",
                dir.display()
            );
        }
        let staging = db.keyspace(STAGING, KeyspaceCreateOptions::default)?;
        let mut phase = meta_u64(meta, "migration")?.unwrap_or(PHASE_COPY);
        info!(dir = %dir.display(), phase, "migrating the data dir from layout {format} to {FORMAT}");
        if phase == PHASE_COPY {
            let copied = self.copy(&staging)?;
            let mut b = db.batch();
            b.insert(meta, "migration", PHASE_CLEAR.to_be_bytes());
            b.remove(meta, "migration_cursor");
            b.commit()?;
            db.persist(PersistMode::SyncAll)?;
            info!(records = copied, "migration: records copied");
            phase = PHASE_CLEAR;
        }
        if phase == PHASE_CLEAR {
            let mut after = None;
            loop {
                let page = self.page(data, &after)?;
                let Some(last) = page.last().map(|(k, _)| k.to_vec()) else { break };
                let mut b = db.batch();
                for (k, _) in page {
                    b.remove(data, k);
                }
                self.commit(b)?;
                after = Some(last);
            }
            meta.insert("migration", PHASE_FILL.to_be_bytes())?;
            db.persist(PersistMode::SyncAll)?;
            phase = PHASE_FILL;
        }
        if phase == PHASE_FILL {
            let mut after = None;
            loop {
                let page = self.page(&staging, &after)?;
                let Some(last) = page.last().map(|(k, _)| k.to_vec()) else { break };
                let mut b = db.batch();
                for (k, v) in page {
                    b.insert(data, k.clone(), v);
                    b.remove(&staging, k);
                }
                self.commit(b)?;
                after = Some(last);
            }
            let mut b = db.batch();
            b.insert(meta, "format", FORMAT.to_be_bytes());
            b.remove(meta, "migration");
            b.commit()?;
            db.persist(PersistMode::SyncAll)?;
            db.delete_keyspace(staging)?;
            info!("migration to layout {FORMAT} done");
            return Ok(());
        }
        anyhow::bail!("data dir {}: unknown migration phase {phase} in its meta records", dir.display())
    }

    /// The next records of `ks` after the key `after` (from the start: `None`): at
    /// most `batch` of them and about `PAGE_BYTES`, at least one. Paging from a
    /// cursor never walks again over what earlier batches deleted.
    fn page(&self, ks: &Keyspace, after: &Option<Vec<u8>>) -> anyhow::Result<Vec<(fjall::UserKey, fjall::UserValue)>> {
        let iter = match after {
            Some(c) => ks.range::<Vec<u8>, _>((Bound::Excluded(c.clone()), Bound::Unbounded)),
            None => ks.iter(),
        };
        let mut page = vec![];
        let mut bytes = 0;
        for kv in iter {
            let (k, v) = kv.into_inner()?;
            bytes += k.len() + v.len();
            page.push((k, v));
            if page.len() >= self.batch || bytes >= PAGE_BYTES {
                break;
            }
        }
        Ok(page)
    }

    /// Phase 1, from the recorded cursor on: returns how many records it copied.
    fn copy(&mut self, staging: &Keyspace) -> anyhow::Result<u64> {
        let (db, meta) = (self.db, self.meta);
        let mut cursor: Option<Vec<u8>> = meta.get("migration_cursor")?.map(|c| c.to_vec());
        let mut copied = 0u64;
        loop {
            let page = self.page(self.data, &cursor)?;
            let Some(last) = page.last().map(|(k, _)| k.to_vec()) else { return Ok(copied) };
            let mut b = db.batch();
            for (k, v) in &page {
                if let Err(e) = decode_set(v) {
                    anyhow::bail!(
                        "migration stopped at key {:?}: {e}; nothing of the old layout was dropped",
                        String::from_utf8_lossy(k)
                    );
                }
                b.insert(staging, data_key(k), v.clone());
            }
            b.insert(meta, "migration_cursor", last.clone());
            self.commit(b)?;
            copied += page.len() as u64;
            cursor = Some(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Persist, Storage, StoreHandle};
    use qkv_core::Store;

    /// A data dir written by the last layout-1 build (bbb3753, `Storage::put` and
    /// `put_hint`): 300 keys `key-000`.. with one value each, `siblings` with two,
    /// `deleted` as a tombstone, and a hint for node 3.
    fn layout1() -> tempfile::TempDir {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout1");
        let to = tempfile::tempdir().unwrap();
        copy_dir(&from, to.path());
        to
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    /// Everything the fixture holds is there, once, in the new layout.
    fn check(dir: &std::path::Path) {
        let s = std::sync::Arc::new(Storage::open(dir, 1, Persist::Buffer, 1000).unwrap());
        let h = StoreHandle(s.clone());
        for i in 0..300u32 {
            let set = h.get(format!("key-{i:03}").as_bytes()).unwrap().unwrap_or_else(|| panic!("key-{i:03} lost"));
            let values: Vec<&[u8]> = set.siblings().iter().filter_map(|s| s.value.as_deref()).collect();
            assert_eq!(values, vec![format!("value-{i}").as_bytes()]);
        }
        assert_eq!(h.get(b"siblings").unwrap().unwrap().siblings().len(), 2);
        assert!(h.get(b"deleted").unwrap().unwrap().is_deleted());
        let all = h.scan((0, &[]), u64::MAX, 10_000).unwrap();
        assert_eq!(all.len(), 302, "every record once, none left in the old form");
        assert!(all.windows(2).all(|w| qkv_core::ring::token(&w[0].0) <= qkv_core::ring::token(&w[1].0)));
        let hints = h.scan_hints().unwrap();
        assert_eq!((hints.len(), hints[0].owner, hints[0].key.as_slice()), (1, 3, b"hinted-key".as_slice()));
        assert!(s.epoch() != 0 && !s.fresh(), "an old disk takes a new epoch, and is not new");
    }

    #[test]
    fn a_layout_1_data_dir_is_migrated_at_open() {
        let dir = layout1();
        check(dir.path());
        // Opening it again finds layout 2 and changes nothing.
        check(dir.path());
    }

    #[test]
    fn a_migration_stopped_in_any_phase_resumes_and_loses_nothing() {
        // 302 records in batches of 50: 7 to copy, 7 to clear, 7 to fill.
        for stop_after in [0, 3, 7, 9, 14, 17, 20] {
            let dir = layout1();
            {
                let db = Database::builder(dir.path()).open().unwrap();
                let data = db.keyspace("data", KeyspaceCreateOptions::default).unwrap();
                let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
                let mut run = Run { db: &db, data: &data, meta: &meta, batch: 50, batches_left: stop_after };
                let e = run.migrate(dir.path()).unwrap_err();
                assert!(e.to_string().contains("interrupted"), "{e}");
            }
            check(dir.path());
        }
    }
}
