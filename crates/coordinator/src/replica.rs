//! The replica's state changes: the only two ways a key's state moves.
//!
//! Both are pure; the node (and the simulator) read the current state, call one
//! of these, and persist the result before acknowledging.

use qkv_proto::{Context, DvvSet, Error, NodeId};

/// Limits on what a replica accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest key, bytes.
    pub key_bytes_max: usize,
    /// Largest value, bytes.
    pub value_bytes_max: usize,
}

impl Limits {
    /// Check a key and an optional value against the limits.
    pub fn check(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::BadRequest("the key is empty".into()));
        }
        if key.len() > self.key_bytes_max {
            return Err(Error::TooLarge { what: "key".into(), size: key.len() as u64, max: self.key_bytes_max as u64 });
        }
        if let Some(v) = value
            && v.len() > self.value_bytes_max
        {
            return Err(Error::TooLarge { what: "value".into(), size: v.len() as u64, max: self.value_bytes_max as u64 });
        }
        Ok(())
    }
}

/// The coordinator's write: a new dot from `me` for `value` (`None`: delete) after `context`.
pub fn coordinate(local: Option<DvvSet>, context: &Context, value: Option<Vec<u8>>, me: NodeId) -> DvvSet {
    let mut s = local.unwrap_or_default();
    s.update(&context.0, value, me);
    s
}

/// Merge a state received from another replica; `None` when nothing changes (no write needed).
pub fn merge(local: Option<DvvSet>, incoming: &DvvSet) -> Result<Option<DvvSet>, Error> {
    if !incoming.is_valid() {
        return Err(Error::BadRequest("invalid version vector set".into()));
    }
    match local {
        Some(l) if l.covers(incoming) => Ok(None),
        Some(l) => Ok(Some(l.merged(incoming))),
        None => Ok(Some(incoming.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_skips_writes_that_change_nothing() {
        let s = coordinate(None, &Context::empty(), Some(b"a".to_vec()), 1);
        assert_eq!(merge(Some(s.clone()), &s), Ok(None));
        assert_eq!(merge(None, &s), Ok(Some(s.clone())));
        let t = coordinate(None, &Context::empty(), Some(b"b".to_vec()), 2);
        assert_eq!(merge(Some(s.clone()), &t).unwrap().unwrap().values().count(), 2);
    }

    #[test]
    fn limits() {
        let l = Limits { key_bytes_max: 4, value_bytes_max: 8 };
        assert!(l.check(b"abcd", Some(b"12345678")).is_ok());
        assert!(matches!(l.check(b"abcde", None), Err(Error::TooLarge { .. })));
        assert!(matches!(l.check(b"a", Some(&[0; 9])), Err(Error::TooLarge { .. })));
        assert!(l.check(b"", None).is_err());
    }
}
